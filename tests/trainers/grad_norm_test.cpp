#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <cmath>

#include "trainers/grad_norm.h"

using namespace ditlab;

namespace {
// Parameters of several shapes with random gradients, one without a gradient.
std::vector<at::Tensor> parameters_with_gradients(double scale) {
  at::manual_seed(0);
  std::vector<at::Tensor> params;
  for (auto shape : std::vector<std::vector<int64_t>>{{3, 4}, {7}, {2, 2, 5}, {1}}) {
    auto p = at::zeros(shape).requires_grad_(true);
    p.mutable_grad() = at::randn(shape) * scale;
    params.push_back(p);
  }
  params.push_back(at::zeros({4}).requires_grad_(true));  // no gradient: skipped
  return params;
}

// The global L2 norm in float64, summed another way: every element squared, in one sum.
double reference_norm(const std::vector<at::Tensor>& params) {
  double sum = 0;
  for (const auto& p : params) {
    if (p.grad().defined()) sum += p.grad().to(at::kDouble).pow(2).sum().item<double>();
  }
  return std::sqrt(sum);
}
}  // namespace

TEST_CASE("the global gradient norm, and clipping to it, match a float64 reference", "[grad_norm]") {
  auto params = parameters_with_gradients(3.0);
  const double norm = reference_norm(params);
  std::vector<at::Tensor> before;
  for (size_t i = 0; i < 4; ++i) before.push_back(params[i].grad().clone());

  // Measuring only (max_norm 0) leaves the gradients as they are.
  CHECK(clip_grad_norm(params, 0.0).item<double>() == Approx(norm).epsilon(1e-6));
  for (size_t i = 0; i < 4; ++i) CHECK(at::equal(params[i].grad(), before[i]));

  // Above the limit every gradient is scaled by max_norm / (norm + 1e-6): the new norm is 1.
  const at::Tensor returned = clip_grad_norm(params, 1.0);
  CHECK(returned.item<double>() == Approx(norm).epsilon(1e-6));  // the norm before clipping
  const double factor = 1.0 / (norm + 1e-6);
  for (size_t i = 0; i < 4; ++i) {
    CHECK(at::allclose(params[i].grad(), before[i] * factor, 1e-6, 1e-7));
  }
  CHECK(reference_norm(params) == Approx(1.0).epsilon(1e-5));
  CHECK_FALSE(params[4].grad().defined());

  // Below the limit nothing changes.
  auto small = parameters_with_gradients(1e-3);
  const at::Tensor unclipped = small[0].grad().clone();
  clip_grad_norm(small, 1.0);
  CHECK(at::equal(small[0].grad(), unclipped));
}
