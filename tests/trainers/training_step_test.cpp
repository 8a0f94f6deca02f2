#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <limits>
#include <map>
#include <string>
#include <vector>

#include "models/dit/dit.h"
#include "models/registry.h"
#include "src/common/compat.h"
#include "src/distributed/communicator.h"
#include "trainers/ema.h"
#include "trainers/training_step.h"

using namespace ditlab;

TEST_CASE("the learning rate warms up linearly over train.lr_warmup_steps", "[training_step]") {
  TrainConfig c;
  c.lr = 2e-4;
  CHECK(learning_rate_at(c, 0) == 2e-4);  // no warm-up
  // As torch's LambdaLR(lambda s: min(s / N, 1)) stepped after each optimizer step (DiM's
  // customized_lr_scheduler): step s runs at lr * s / N, step 0 at 0.
  c.lr_warmup_steps = 4;
  CHECK(learning_rate_at(c, 0) == 0.0);
  CHECK(learning_rate_at(c, 1) == Approx(0.5e-4));
  CHECK(learning_rate_at(c, 2) == Approx(1.0e-4));
  CHECK(learning_rate_at(c, 3) == Approx(1.5e-4));
  CHECK(learning_rate_at(c, 4) == 2e-4);
  CHECK(learning_rate_at(c, 1000) == 2e-4);
}

namespace {
// Every shipped backbone decays everything, as the official recipes do; a backbone may exempt
// parameters (Backbone::decays). This one exempts its biases.
class BiasExemptDiT : public DiT {
 public:
  using DiT::DiT;
  bool decays(const std::string& name) const override {
    return name.size() < 5 || name.compare(name.size() - 5, 5, ".bias") != 0;
  }
};
}  // namespace

TEST_CASE("parameters a backbone exempts from weight decay get their own AdamW group", "[training_step]") {
  ExperimentConfig config;
  config.model.name = "dit";
  config.model.hidden_size = 16;
  config.model.depth = 1;
  config.model.num_heads = 2;
  config.model.patch_size = 4;
  config.model.input_size = 8;
  config.model.in_channels = 1;
  config.model.num_classes = 3;
  config.train.weight_decay = 0.03;
  config.train.global_batch_size = 2;
  Communicator communicator(DistEnv{}, "auto", std::chrono::seconds(10));
  // A shipped backbone (DiM, like DiM's own AdamW) has one group, all decayed.
  {
    ExperimentConfig dim = config;
    dim.model.name = "dim";
    dim.model.depth = 3;
    dim.model.num_heads = 0;  // no attention
    TrainingStep step(dim, build_backbone(resolve_model_config(dim.model)), c10::Device(c10::kCPU), communicator,
                      /*with_ema=*/false);
    REQUIRE(step.optimizer().param_groups().size() == 1);
    CHECK(static_cast<const torch::optim::AdamWOptions&>(step.optimizer().param_groups()[0].options())
              .weight_decay() == 0.03);
  }
  DiTOptions o;
  o.input_size = 8;
  o.patch_size = 4;
  o.in_channels = 1;
  o.hidden_size = 16;
  o.depth = 1;
  o.num_heads = 2;
  o.num_classes = 3;
  at::manual_seed(0);
  auto model = std::make_shared<BiasExemptDiT>(o);
  {
    // adaLN-Zero's zero-initialised layers would leave most biases without a gradient at step 0.
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.add_(0.05 * at::randn_like(p));
  }
  TrainingStep step(config, model, c10::Device(c10::kCPU), communicator, /*with_ema=*/false);
  auto& groups = step.optimizer().param_groups();
  REQUIRE(groups.size() == 2);
  auto decay_of = [&](size_t g) {
    return static_cast<const torch::optim::AdamWOptions&>(groups[g].options()).weight_decay();
  };
  CHECK(decay_of(0) == 0.03);
  CHECK(decay_of(1) == 0.0);
  // Exactly the biases are exempt.
  size_t biases = 0;
  for (const auto& [name, p] : step.trainable()) {
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    biases += bias;
    bool in_exempt_group = false;
    for (const auto& q : groups[1].params()) in_exempt_group = in_exempt_group || q.is_same(p);
    INFO(name);
    CHECK(in_exempt_group == bias);
  }
  CHECK(biases > 5);
  // A step runs with the two groups.
  Batch batch{at::randn({2, 1, 8, 8}), at::tensor({0, 2}, at::kLong)};
  auto result = step.run(0, batch);
  CHECK(result.applied());
}

namespace {
ExperimentConfig small_dit(int64_t width, bool mup, int64_t base_width) {
  ExperimentConfig config;
  config.model.name = "dit";
  config.model.hidden_size = width;
  config.model.depth = 2;
  config.model.num_heads = 2;
  config.model.patch_size = 4;
  config.model.input_size = 8;
  config.model.in_channels = 1;
  config.model.num_classes = 3;
  config.model.mup.enabled = mup;
  config.model.mup.base_width = base_width;
  config.train.global_batch_size = 4;
  config.train.lr = 1e-3;
  config.train.seed = 7;
  return config;
}

Batch small_batch() {
  at::manual_seed(11);
  return {at::randn({4, 1, 8, 8}), at::tensor({0, 2, 1, 0}, at::kLong)};
}
}  // namespace

TEST_CASE("training a µP model at its base width is training the standard model, step for step", "[training_step][mup]") {
  Communicator communicator(DistEnv{}, "auto", std::chrono::seconds(10));
  std::vector<std::map<std::string, at::Tensor>> finals;
  for (bool mup : {false, true}) {
    ExperimentConfig config = small_dit(32, mup, 32);
    config.train.weight_decay = 0.1;
    config.train.lr_warmup_steps = 2;
    at::manual_seed(0);
    auto model = build_backbone(resolve_model_config(config.model));
    TrainingStep step(config, model, c10::Device(c10::kCPU), communicator, /*with_ema=*/false);
    const Batch batch = small_batch();
    for (int64_t s = 0; s < 3; ++s) REQUIRE(step.run(s, batch).applied());
    std::map<std::string, at::Tensor> params;
    for (const auto& item : step.model().named_parameters()) params[item.key()] = item.value().clone();
    finals.push_back(params);
  }
  for (const auto& [name, value] : finals[0]) {
    INFO(name);
    CHECK(at::equal(value, finals[1].at(name)));
  }
}

TEST_CASE("AdamW applies µP's multipliers: hidden weights move lr / m, the rest lr", "[training_step][mup]") {
  // Adam's first update is lr * g / (|g| + eps): each entry moves by lr wherever the gradient is
  // far above eps, so the largest move of a tensor is its learning rate.
  Communicator communicator(DistEnv{}, "auto", std::chrono::seconds(10));
  ExperimentConfig config = small_dit(128, true, 32);  // m = 4
  config.train.weight_decay = 0.0;
  at::manual_seed(0);
  auto model = build_backbone(resolve_model_config(config.model));
  {
    // adaLN-Zero's zero-initialised layers would leave the rest without a gradient at step 0.
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) {
      if (p.requires_grad() && at::count_nonzero(p).item<int64_t>() == 0) p.normal_(0.0, 0.02);
    }
  }
  TrainingStep step(config, model, c10::Device(c10::kCPU), communicator, /*with_ema=*/false);
  std::map<std::string, at::Tensor> before;
  for (const auto& item : step.model().named_parameters()) before[item.key()] = item.value().clone();
  REQUIRE(step.run(0, small_batch()).applied());
  auto moved = [&](const std::string& name) {
    return (step.model().named_parameters()[name] - before.at(name)).abs().max().item<double>();
  };
  CHECK(moved("blocks.0.attn.qkv.weight") == Approx(1e-3 / 4).epsilon(1e-3));
  CHECK(moved("blocks.1.mlp.fc2.weight") == Approx(1e-3 / 4).epsilon(1e-3));
  CHECK(moved("t_embedder.mlp.2.weight") == Approx(1e-3 / 4).epsilon(1e-3));
  CHECK(moved("x_embedder.proj.weight") == Approx(1e-3).epsilon(1e-3));
  CHECK(moved("blocks.0.attn.qkv.bias") == Approx(1e-3).epsilon(1e-3));
  CHECK(moved("final_layer.linear.weight") == Approx(1e-3).epsilon(1e-3));

  // Weight decay: hidden groups decay by (lr / m) * (wd * m), the same product as the others.
  config.train.weight_decay = 0.05;
  TrainingStep decayed(config, model, c10::Device(c10::kCPU), communicator, /*with_ema=*/false);
  decayed.run(0, small_batch());
  for (const auto& group : decayed.optimizer().param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    CHECK(o.lr() * o.weight_decay() == Approx(1e-3 * 0.05));
  }
  CHECK(decayed.optimizer().param_groups().size() == 2);
}

TEST_CASE("drawing the next step's samples ahead changes nothing, in order or after a jump", "[training_step]") {
  // Three trainings of the same model on the same batches: draws made in place (prefetch 0),
  // drawn a step ahead on a background thread, and drawn ahead but with a jump in steps (as a
  // resume makes), where the stale prefetched draws must not be used.
  auto train = [](int64_t prefetch, const std::vector<int64_t>& steps) {
    ExperimentConfig config = small_dit(16, false, 0);
    config.data.prefetch = prefetch;
    config.model.class_dropout_prob = 0.5;  // label drops and flips are drawn too
    config.data.random_flip = true;
    config.train.grad_accum_steps = 2;      // the shard's draws are split into micro-batches
    Communicator communicator(DistEnv{}, "auto", std::chrono::seconds(10));
    torch::manual_seed(3);
    auto model = build_backbone(resolve_model_config(config.model));
    TrainingStep step(config, model, c10::Device(c10::kCPU), communicator, /*with_ema=*/false);
    Batch batch = small_batch();
    for (int64_t s : steps) REQUIRE(step.run(s, batch).applied());
    return step.model().named_parameters()["final_layer.linear.weight"].clone();
  };
  const auto in_place = train(0, {0, 1, 5, 6});
  CHECK(at::equal(train(2, {0, 1, 5, 6}), in_place));
  // Another step order gives other draws, hence other weights: the comparison can fail.
  CHECK_FALSE(at::equal(train(2, {0, 1, 2, 3}), in_place));
}

TEST_CASE("a step with a non-finite loss leaves weights, optimizer and EMA as they were", "[training_step]") {
  // The decision is a device tensor that the update and the EMA read (nothing is read back on
  // LibTorch 2.4+); the flags say so afterwards.
  ExperimentConfig config = small_dit(16, false, 0);
  config.train.ema_decay = 0.5;
  Communicator communicator(DistEnv{}, "auto", std::chrono::seconds(10));
  torch::manual_seed(3);
  auto model = build_backbone(resolve_model_config(config.model));
  TrainingStep step(config, model, c10::Device(c10::kCPU), communicator, /*with_ema=*/true);
  REQUIRE(step.run(0, small_batch()).applied());
  auto snapshot = [&] {
    std::vector<at::Tensor> out;
    for (const auto& p : step.model().parameters()) out.push_back(p.clone());
    for (const auto& p : step.ema()->shadow().parameters()) out.push_back(p.clone());
    for (const auto& p : step.model().parameters()) {
      if (!p.requires_grad()) continue;
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(
          *compat::optimizer_state_if_any(step.optimizer(), p));
      out.push_back(s.exp_avg().clone());
      out.push_back(at::scalar_tensor(static_cast<double>(s.step())));
    }
    return out;
  };
  const auto before = snapshot();
  Batch poisoned = small_batch();
  poisoned.images[1][0][2][3] = std::numeric_limits<float>::quiet_NaN();
  StepResult bad = step.run(1, poisoned);
  CHECK_FALSE(bad.applied());
  CHECK_FALSE(bad.stop_requested());
  const auto after = snapshot();
  REQUIRE(after.size() == before.size());
  for (size_t i = 0; i < before.size(); ++i) {
    INFO("tensor " << i);
    CHECK(at::equal(after[i], before[i]));
  }
  // The next finite step goes on from there (its step count is 2, not 3).
  REQUIRE(step.run(2, small_batch()).applied());
  const auto& first = step.model().parameters();
  for (const auto& p : first) {
    if (!p.requires_grad()) continue;
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(
        *compat::optimizer_state_if_any(step.optimizer(), p));
    CHECK(s.step() == 2);
    break;
  }
}

TEST_CASE("train.cuda_graph is refused where a step cannot be recorded", "[training_step]") {
  ExperimentConfig config = small_dit(16, false, 0);
  config.train.cuda_graph = true;
  Communicator communicator(DistEnv{}, "auto", std::chrono::seconds(10));
  auto model = build_backbone(resolve_model_config(config.model));
  CHECK_THROWS_WITH(TrainingStep(config, model, c10::Device(c10::kCPU), communicator, false),
                    Catch::Contains("train.cuda_graph") && Catch::Contains("cpu"));
}
