#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include "src/common/compat.h"
#include "tests/trainers/adamw_test_parameters.h"
#include "trainers/device_adamw.h"

using namespace ditlab;
using ditlab::testing::copies;
using ditlab::testing::make_parameters;

namespace {

// Two groups: parameters 0-1 (lr multiplier 1, weight decay), 2-3 (multiplier 0.25, none).
std::vector<torch::optim::OptimizerParamGroup> two_groups(const std::vector<at::Tensor>& ps, double lr) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto decayed = std::make_unique<torch::optim::AdamWOptions>(lr);
  decayed->betas({0.9, 0.99}).weight_decay(0.05);
  auto plain = std::make_unique<torch::optim::AdamWOptions>(lr * 0.25);
  plain->betas({0.9, 0.99}).weight_decay(0.0);
  groups.emplace_back(std::vector<at::Tensor>{ps[0], ps[1]}, std::move(decayed));
  groups.emplace_back(std::vector<at::Tensor>{ps[2], ps[3]}, std::move(plain));
  return groups;
}

const torch::optim::AdamWParamState& state_of(torch::optim::AdamW& opt, const at::Tensor& p) {
  return static_cast<const torch::optim::AdamWParamState&>(*compat::optimizer_state_if_any(opt, p));
}

}  // namespace

// The reference is LibTorch's own AdamW, stepped only where the device flag says the step is
// finite. Before LibTorch 2.4 DeviceAdamW is the multi-tensor step (bit for bit); from 2.4 on
// PyTorch's fused kernel, which computes the same formula in another order.
TEST_CASE("DeviceAdamW follows torch::optim::AdamW, skips flagged steps, and keeps step counts", "[adamw]") {
  const double lr = 3e-3;
  auto a = make_parameters(3);
  auto b = copies(a);
  torch::optim::AdamW reference(two_groups(a, lr), torch::optim::AdamWOptions(lr));
  torch::optim::AdamW optimizer(two_groups(b, lr), torch::optim::AdamWOptions(lr));
  DeviceAdamW ours(optimizer, {1.0, 0.25}, at::kCPU);
  const double tolerance = ours.on_device() ? 1e-6 : 0.0;
  at::manual_seed(11);
  const std::vector<bool> skipped = {false, true, false, false, true, true, false};
  for (size_t step = 0; step < skipped.size(); ++step) {
    // A schedule: the learning rate changes every step, and reaches every group scaled.
    const double step_lr = lr * static_cast<double>(step + 1) / 4.0;
    auto& groups = reference.param_groups();
    static_cast<torch::optim::AdamWOptions&>(groups[0].options()).lr(step_lr);
    static_cast<torch::optim::AdamWOptions&>(groups[1].options()).lr(step_lr * 0.25);
    ours.set_lr(step_lr);
    for (size_t i = 0; i < a.size(); ++i) {
      auto g = at::randn(a[i].sizes());
      a[i].mutable_grad() = g.clone();
      b[i].mutable_grad() = g.clone();
    }
    if (!skipped[step]) reference.step();
    ours.step(at::full({}, skipped[step] ? 1.0 : 0.0, at::kFloat));
    for (size_t i = 0; i < a.size(); ++i) {
      INFO("step " << step << ", parameter " << i);
      REQUIRE(at::allclose(a[i], b[i], tolerance, tolerance));
    }
  }
  ours.sync_to_host();
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("parameter " << i);
    CHECK(state_of(optimizer, b[i]).step() == 4);  // 7 steps, 3 skipped
    CHECK(at::allclose(state_of(optimizer, b[i]).exp_avg(), state_of(reference, a[i]).exp_avg(), tolerance, tolerance));
    CHECK(at::allclose(state_of(optimizer, b[i]).exp_avg_sq(), state_of(reference, a[i]).exp_avg_sq(), tolerance, tolerance));
  }
}

TEST_CASE("DeviceAdamW takes up a replaced state (a restore) before its next step", "[adamw]") {
  auto a = make_parameters(5);
  auto b = copies(a);
  auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1);
  torch::optim::AdamW reference(a, options), optimizer(b, options);
  DeviceAdamW ours(optimizer, {1.0}, at::kCPU);
  const double tolerance = ours.on_device() ? 1e-6 : 0.0;
  ours.set_lr(1e-2);
  const auto finite = at::zeros({}, at::kFloat);
  auto give_gradients = [&](uint64_t seed) {
    at::manual_seed(seed);
    for (size_t i = 0; i < a.size(); ++i) {
      auto g = at::randn(a[i].sizes());
      a[i].mutable_grad() = g.clone();
      b[i].mutable_grad() = g.clone();
    }
  };
  give_gradients(1);
  ours.step(finite);  // ours is one step ahead of the reference now
  for (int s = 0; s < 3; ++s) {
    give_gradients(2 + s);
    reference.step();
  }
  // Replace ours by the reference's state (step 3), as a checkpoint restore does.
  for (size_t i = 0; i < a.size(); ++i) {
    auto state = std::make_unique<torch::optim::AdamWParamState>(state_of(reference, a[i]));
    state->exp_avg(state->exp_avg().clone());
    state->exp_avg_sq(state->exp_avg_sq().clone());
    compat::optimizer_state_slot(optimizer, b[i]) = std::move(state);
    b[i].detach().copy_(a[i].detach());
  }
  ours.reload();
  give_gradients(9);
  reference.step();
  ours.step(finite);
  for (size_t i = 0; i < a.size(); ++i) REQUIRE(at::allclose(a[i], b[i], tolerance, tolerance));
  ours.sync_to_host();
  CHECK(state_of(optimizer, b[0]).step() == 4);
}
