#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "src/common/error.h"
#include "src/common/op_counter.h"

using namespace ditlab;

TEST_CASE("the op counter counts outermost operator calls by name", "[op_counter]") {
  const auto x = at::randn({4, 3});
  const auto w = at::randn({5, 3});
  const auto b = at::randn({5});
  OpCounter counter;
  auto y = at::add(x, x);
  y = at::add(y, 1.0);
  // linear calls addmm (and t) inside: only the outer call is the framework's.
  const auto z = at::linear(x, w, b);
  const auto counts = counter.counts();
  CHECK(counts.at("aten::add") == 2);
  CHECK(counts.at("aten::linear") == 1);
  CHECK(counts.count("aten::addmm") == 0);
  CHECK(counts.count("aten::t") == 0);
  CHECK(counter.total() == 3);
  counter.reset();
  CHECK(counter.total() == 0);
}

TEST_CASE("the op counter sees the operators backward calls", "[op_counter]") {
  auto a = at::randn({3}).set_requires_grad(true);
  auto c = at::randn({3}).set_requires_grad(true);
  const auto loss = (a * c).sum();
  OpCounter counter;
  loss.backward();
  const auto counts = counter.counts();
  // MulBackward0 multiplies the incoming gradient by each input: one mul per input, however the
  // engine runs it; SumBackward0 expands.
  CHECK(counts.at("aten::mul") == 2);
  CHECK(counts.count("aten::expand") == 1);
  CHECK(a.grad().defined());
}

TEST_CASE("one op counter at a time", "[op_counter]") {
  const auto one = at::ones({1});
  {
    OpCounter counter;
    CHECK_THROWS_AS(OpCounter(), Error);
  }
  OpCounter after;  // the first one's end frees the place
  at::add(one, 1.0);
  CHECK(after.total() == 1);
}
