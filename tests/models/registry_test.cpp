#include <catch2/catch.hpp>

#include "models/registry.h"
#include "src/common/error.h"

using namespace ditlab;

TEST_CASE("which backbones' training step a CUDA graph can record", "[registry]") {
  for (const char* name : {"dit", "DiT-XL/2", "skip-dit", "u-dit", "dim"}) {
    INFO(name);
    CHECK(recordable_as_cuda_graph(name));
  }
  // Token routing reads expert counts back to the host and sizes tensors by them.
  CHECK_FALSE(recordable_as_cuda_graph("dit-moe"));
  CHECK_FALSE(recordable_as_cuda_graph("DiT-MoE-S/2-8E2A"));
  CHECK_THROWS_AS(recordable_as_cuda_graph("no-such-model"), ConfigError);
}
