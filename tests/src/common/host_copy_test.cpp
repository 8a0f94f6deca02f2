#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include "src/common/host_copy.h"

using namespace ditlab;

TEST_CASE("a host copy holds the value at the time it was made", "[host_copy]") {
  HostCopy none;
  CHECK_FALSE(none.valid());
  auto flags = at::tensor({1, 0}).to(at::kBool);
  HostCopy copy(flags);
  REQUIRE(copy.valid());
  flags.fill_(false);  // later work on the source does not reach the copy
  CHECK(copy.get()[0].item<bool>());
  CHECK_FALSE(copy.get()[1].item<bool>());
  CHECK(copy.get().device().is_cpu());
  HostCopy shared = copy;  // copies share the value
  CHECK(at::equal(shared.get(), copy.get()));
}
