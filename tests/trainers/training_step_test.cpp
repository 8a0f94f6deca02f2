#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include "models/registry.h"
#include "src/distributed/communicator.h"
#include "trainers/training_step.h"

using namespace ditlab;

TEST_CASE("the learning rate warms up linearly over train.lr_warmup_steps", "[training_step]") {
  TrainConfig c;
  c.lr = 2e-4;
  CHECK(learning_rate_at(c, 0) == 2e-4);  // no warm-up
  c.lr_warmup_steps = 4;
  CHECK(learning_rate_at(c, 0) == Approx(0.5e-4));
  CHECK(learning_rate_at(c, 1) == Approx(1.0e-4));
  CHECK(learning_rate_at(c, 2) == Approx(1.5e-4));
  CHECK(learning_rate_at(c, 3) == 2e-4);
  CHECK(learning_rate_at(c, 1000) == 2e-4);
}

TEST_CASE("parameters a backbone exempts from weight decay get their own AdamW group", "[training_step]") {
  ExperimentConfig config;
  config.model.name = "dim";
  config.model.hidden_size = 16;
  config.model.depth = 3;
  config.model.patch_size = 4;
  config.model.input_size = 8;
  config.model.in_channels = 1;
  config.model.num_classes = 3;
  config.train.weight_decay = 0.03;
  config.train.global_batch_size = 2;
  Communicator communicator(DistEnv{}, "auto", std::chrono::seconds(10));
  auto model = build_backbone(resolve_model_config(config.model));
  TrainingStep step(config, model, c10::Device(c10::kCPU), communicator, /*with_ema=*/false);
  auto& groups = step.optimizer().param_groups();
  REQUIRE(groups.size() == 2);
  auto decay_of = [&](size_t g) {
    return static_cast<const torch::optim::AdamWOptions&>(groups[g].options()).weight_decay();
  };
  CHECK(decay_of(0) == 0.03);
  CHECK(decay_of(1) == 0.0);
  // Exactly the A_log and D of the three mixers are exempt.
  std::vector<std::string> exempt;
  for (const auto& [name, p] : step.trainable()) {
    for (const auto& q : groups[1].params()) {
      if (q.is_same(p)) exempt.push_back(name);
    }
  }
  std::sort(exempt.begin(), exempt.end());
  CHECK(exempt == std::vector<std::string>{"blocks.0.mixer.A_log", "blocks.0.mixer.D",
                                           "blocks.1.mixer.A_log", "blocks.1.mixer.D",
                                           "blocks.2.mixer.A_log", "blocks.2.mixer.D"});
  // One step runs and moves the weights; the exempt parameters saw no decay (their gradient
  // alone moved them, and A_log's gradient is not zero).
  at::manual_seed(0);
  Batch batch{at::randn({2, 1, 8, 8}), at::tensor({0, 2}, at::kLong)};
  auto before = step.model().named_parameters()["blocks.0.mixer.A_log"].clone();
  auto result = step.run(0, batch);
  CHECK(result.applied);
  CHECK_FALSE(at::equal(before, step.model().named_parameters()["blocks.0.mixer.A_log"]));
}
