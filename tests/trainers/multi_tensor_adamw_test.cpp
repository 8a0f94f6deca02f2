#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <cmath>
#include <torch/optim/adamw.h>

#include "src/common/compat.h"
#include "tests/trainers/adamw_test_parameters.h"
#include "trainers/multi_tensor_adamw.h"

using namespace ditlab;
using ditlab::testing::copies;
using ditlab::testing::make_parameters;

TEST_CASE("the multi-tensor AdamW step equals torch::optim::AdamW bit for bit", "[adamw]") {
  auto a = make_parameters(3);
  auto b = copies(a);
  auto options = torch::optim::AdamWOptions(3e-3).betas({0.9, 0.99}).eps(1e-8).weight_decay(0.05);
  torch::optim::AdamW reference(a, options), ours(b, options);
  at::manual_seed(11);
  for (int step = 0; step < 6; ++step) {
    for (size_t i = 0; i < a.size(); ++i) {
      // Parameter 3 has no gradient in the first two steps: it must get no state and no decay
      // then, and afterwards run its own (shorter) bias-correction schedule.
      if (i == 3 && step < 2) {
        a[i].mutable_grad() = at::Tensor();
        b[i].mutable_grad() = at::Tensor();
        continue;
      }
      auto g = at::randn(a[i].sizes());
      a[i].mutable_grad() = g.clone();
      b[i].mutable_grad() = g.clone();
    }
    reference.step();
    multi_tensor_adamw_step(ours);
    for (size_t i = 0; i < a.size(); ++i) {
      INFO("step " << step << ", parameter " << i);
      REQUIRE(at::equal(a[i], b[i]));
      auto* ra = compat::optimizer_state_if_any(reference, a[i]);
      auto* rb = compat::optimizer_state_if_any(ours, b[i]);
      REQUIRE((ra == nullptr) == (rb == nullptr));
      if (!ra) continue;
      auto& sa = static_cast<torch::optim::AdamWParamState&>(*ra);
      auto& sb = static_cast<torch::optim::AdamWParamState&>(*rb);
      REQUIRE(sa.step() == sb.step());
      REQUIRE(at::equal(sa.exp_avg(), sb.exp_avg()));
      REQUIRE(at::equal(sa.exp_avg_sq(), sb.exp_avg_sq()));
    }
  }
  // Parameter 3 started two steps late.
  auto& late = static_cast<torch::optim::AdamWParamState&>(*compat::optimizer_state_if_any(ours, b[3]));
  CHECK(late.step() == 4);
}

TEST_CASE("the multi-tensor AdamW step follows the AdamW formula", "[adamw]") {
  // One scalar parameter, two steps, against the update written out by hand.
  auto p = at::tensor({1.0}, at::TensorOptions().dtype(at::kDouble)).set_requires_grad(true);
  const double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
  torch::optim::AdamW opt({p}, torch::optim::AdamWOptions(lr).betas({b1, b2}).eps(eps).weight_decay(wd));
  double x = 1.0, m = 0.0, v = 0.0;
  for (int t = 1; t <= 2; ++t) {
    const double g = t == 1 ? 0.5 : -2.0;
    p.mutable_grad() = at::tensor({g}, at::TensorOptions().dtype(at::kDouble));
    multi_tensor_adamw_step(opt);
    x *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double m_hat = m / (1 - std::pow(b1, t)), v_hat = v / (1 - std::pow(b2, t));
    x -= lr * m_hat / (std::sqrt(v_hat) + eps);
    CHECK(p.item<double>() == Approx(x).epsilon(1e-12));
  }
}
