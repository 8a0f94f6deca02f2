// Exact resume: N steps in one go equal k steps, a stop, and N - k more, bit for bit.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "src/common/error.h"
#include "src/common/sample_rng.h"
#include "src/config/config_loader.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"
#include "trainers/checkpoint.h"
#include "trainers/trainer.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
ExperimentConfig config_for(const std::string& run_dir, std::vector<std::string> overrides) {
  overrides.push_back("run.dir=" + run_dir);
  overrides.push_back("sample.at_end=false");
  overrides.push_back("train.log_every=3");  // windows that a resume can split
  return load_experiment_config(ditlab::testing::source_dir() + "/configs/debug/dit.yaml", overrides);
}

// The logged records without the timing fields (which differ between any two runs).
std::vector<std::string> logged_losses(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line.substr(0, line.find(", \"lr\"")));
  return out;
}

void require_identical(const std::map<std::string, at::Tensor>& a,
                       const std::map<std::string, at::Tensor>& b, const std::string& what) {
  REQUIRE(a.size() == b.size());
  for (const auto& [name, t] : a) {
    INFO(what << " " << name);
    REQUIRE(b.count(name) == 1);
    CHECK(at::equal(t, b.at(name)));
  }
}

void check_exact_resume(int64_t total, int64_t first_part, std::vector<std::string> extra) {
  TempDir dir("resume");
  auto one_go = extra;
  one_go.push_back("train.steps=" + std::to_string(total));
  train(config_for(dir / "one", one_go));

  auto part = extra;
  part.push_back("train.steps=" + std::to_string(first_part));
  train(config_for(dir / "two", part));
  TrainOptions resume;
  resume.resume = "auto";
  auto summary = train(config_for(dir / "two", one_go), resume);
  CHECK(summary.start_step == first_part);

  auto last = [&](const std::string& run) {
    return load_checkpoint(run + "/checkpoints/step-" + std::string(8 - std::to_string(total).size(), '0') +
                           std::to_string(total));
  };
  auto a = last(dir / "one"), b = last(dir / "two");
  require_identical(a.model, b.model, "model");
  require_identical(a.ema, b.ema, "ema");
  require_identical(a.optimizer, b.optimizer, "optimizer");
  CHECK(at::equal(a.trainer_state.at("rng.cpu"), b.trainer_state.at("rng.cpu")));
  auto logged_a = logged_losses(dir / "one"), logged_b = logged_losses(dir / "two");
  CHECK(logged_a.size() == static_cast<size_t>((total + 2) / 3));
  CHECK(logged_a == logged_b);
}
}  // namespace

TEST_CASE("resume inside an epoch and inside a logging window is bit-exact", "[resume]") {
  check_exact_resume(10, 5, {});
}

TEST_CASE("a µP run at twice its base width resumes bit-exactly", "[resume][mup]") {
  // The µP rescaling happens when the model is built, before the checkpoint is loaded, so it is
  // never applied twice (unlike microsoft/mup's set_base_shapes with rescale_params).
  check_exact_resume(6, 3, {"model.hidden_size=128", "model.mup.enabled=true", "model.mup.base_width=64"});
}

TEST_CASE("resume at an epoch boundary is bit-exact", "[resume]") {
  // The debug config has 256 images and batch 16: 16 steps per epoch.
  check_exact_resume(20, 16, {});
}

TEST_CASE("resume with gradient accumulation is bit-exact", "[resume]") {
  check_exact_resume(9, 4, {"train.grad_accum_steps=2"});
}

TEST_CASE("a resumed run must keep the maths of the checkpoint", "[resume]") {
  TempDir dir("resume");
  train(config_for(dir / "run", {"train.steps=3"}));
  TrainOptions resume;
  resume.resume = "auto";
  CHECK_THROWS_WITH(train(config_for(dir / "run", {"train.steps=6", "train.lr=0.5"}), resume),
                    Catch::Contains("train.lr: checkpoint 0.001, now 0.5"));
  // bf16 gradient sums round differently from fp32 ones: a change of the maths too.
  CHECK_THROWS_WITH(train(config_for(dir / "run", {"train.steps=6", "train.grad_reduce_dtype=bf16"}), resume),
                    Catch::Contains("train.grad_reduce_dtype: checkpoint fp32, now bf16"));
  // A finished run: --resume auto has nothing to do (a re-queued job succeeds), an explicit
  // checkpoint at the last step is an error.
  const auto weights_before = std::filesystem::last_write_time(dir / "run/model.safetensors");
  auto again = train(config_for(dir / "run", {"train.steps=3"}), resume);
  CHECK(again.start_step == 3);
  CHECK(again.steps == 3);
  CHECK(std::filesystem::last_write_time(dir / "run/model.safetensors") == weights_before);
  TrainOptions explicit_resume;
  explicit_resume.resume = dir / "run/checkpoints/step-00000003";
  CHECK_THROWS_WITH(train(config_for(dir / "run", {"train.steps=3"}), explicit_resume),
                    Catch::Contains("raise train.steps"));
  // Killed after its last checkpoint but before the final weights: resuming writes them.
  std::filesystem::remove(dir / "run/model.safetensors");
  auto finished = train(config_for(dir / "run", {"train.steps=3"}), resume);
  CHECK(finished.start_step == 3);
  CHECK(std::filesystem::exists(dir / "run/model.safetensors"));
  resume.allow_config_change = true;
  CHECK_THROWS_WITH(train(config_for(dir / "run", {"train.steps=6", "model.depth=3"}), resume),
                    Catch::Contains("model.depth"));
  auto changed = train(config_for(dir / "run", {"train.steps=6", "train.lr=0.0005"}), resume);
  CHECK(changed.start_step == 3);
  CHECK(changed.steps == 6);
  // An explicit checkpoint path works too (and a later run into another directory).
  TrainOptions from_path;
  from_path.resume = dir / "run/checkpoints/step-00000003";
  from_path.allow_config_change = true;
  CHECK(train(config_for(dir / "other", {"train.steps=5", "train.lr=0.0005"}), from_path).start_step == 3);
  // Without --resume, an existing run is never overwritten.
  CHECK_THROWS_WITH(train(config_for(dir / "run", {"train.steps=8"})), Catch::Contains("--resume auto"));
}

TEST_CASE("a run trained longer is finished only when both final files are at its last step", "[resume]") {
  namespace fs = std::filesystem;
  TempDir dir("resume");
  train(config_for(dir / "run", {"train.steps=3"}));
  fs::copy_file(dir / "run/model.safetensors", dir / "model-3.safetensors");
  fs::copy_file(dir / "run/ema.safetensors", dir / "ema-3.safetensors");
  TrainOptions resume;
  resume.resume = "auto";
  CHECK(train(config_for(dir / "run", {"train.steps=5"}), resume).start_step == 3);
  auto final_step = [&](const std::string& name) {
    return map_safetensors(dir / ("run/" + name)).metadata.at("step");
  };
  CHECK(final_step("model.safetensors") == "5");
  // Killed after the step-5 checkpoint, before the final files were replaced (both, then one):
  // a re-queued --resume auto writes them instead of calling the run finished.
  for (const bool only_ema : {false, true}) {
    if (!only_ema) fs::copy_file(dir / "model-3.safetensors", dir / "run/model.safetensors",
                                 fs::copy_options::overwrite_existing);
    fs::copy_file(dir / "ema-3.safetensors", dir / "run/ema.safetensors", fs::copy_options::overwrite_existing);
    INFO("only the EMA left at step 3: " << only_ema);
    auto again = train(config_for(dir / "run", {"train.steps=5"}), resume);
    CHECK(again.start_step == 5);
    CHECK(final_step("model.safetensors") == "5");
    CHECK(final_step("ema.safetensors") == "5");
  }
  // Now it is finished: nothing is rewritten.
  const auto written = fs::last_write_time(dir / "run/ema.safetensors");
  train(config_for(dir / "run", {"train.steps=5"}), resume);
  CHECK(fs::last_write_time(dir / "run/ema.safetensors") == written);
}

TEST_CASE("a resumed run refuses a dataset of another size unless allowed", "[resume]") {
  namespace fs = std::filesystem;
  TempDir dir("resume");
  train(config_for(dir / "run", {"train.steps=3"}));
  const std::string last = dir / "run/checkpoints/step-00000003";
  Checkpoint c = load_checkpoint(last);
  REQUIRE(c.trainer_metadata.at("dataset_size") == "256");  // configs/debug/dit.yaml's data.limit
  // As if the run had trained on a folder that has since gained images (no config key changes).
  c.trainer_metadata["dataset_size"] = "300";
  fs::remove_all(last);
  save_checkpoint(dir / "run", c, 0, 0);
  TrainOptions resume;
  resume.resume = "auto";
  CHECK_THROWS_WITH(train(config_for(dir / "run", {"train.steps=5"}), resume),
                    Catch::Contains("the dataset now holds 256 items") && Catch::Contains(last) &&
                        Catch::Contains("trained on 300"));
  resume.allow_config_change = true;
  CHECK(train(config_for(dir / "run", {"train.steps=5"}), resume).start_step == 3);
}

TEST_CASE("a resumed run refuses a checkpoint of other random streams unless allowed", "[resume]") {
  namespace fs = std::filesystem;
  TempDir dir("resume");
  train(config_for(dir / "run", {"train.steps=3"}));
  const std::string last = dir / "run/checkpoints/step-00000003";
  Checkpoint c = load_checkpoint(last);
  REQUIRE(c.trainer_metadata.at("random_streams") == kRandomStreams);
  // As a checkpoint from before the streams were recorded (32-bit seeds).
  c.trainer_metadata.erase("random_streams");
  fs::remove_all(last);
  save_checkpoint(dir / "run", c, 0, 0);
  TrainOptions resume;
  resume.resume = "auto";
  CHECK_THROWS_WITH(train(config_for(dir / "run", {"train.steps=5"}), resume),
                    Catch::Contains(last) && Catch::Contains("32-bit seeds") && Catch::Contains(kRandomStreams));
  resume.allow_config_change = true;
  CHECK(train(config_for(dir / "run", {"train.steps=5"}), resume).start_step == 3);
}

TEST_CASE("resume auto starts fresh when there is no checkpoint", "[resume]") {
  TempDir dir("resume");
  TrainOptions resume;
  resume.resume = "auto";
  auto summary = train(config_for(dir / "new", {"train.steps=2"}), resume);
  CHECK(summary.start_step == 0);
  CHECK(summary.steps == 2);
}

TEST_CASE("non-finite steps are skipped, and too many in a row stop the run", "[resume]") {
  TempDir dir("resume");
  // An absurd learning rate without clipping blows the weights up within a few steps.
  auto config = config_for(dir / "run", {"train.steps=40", "train.lr=1e30", "train.grad_clip=0",
                                         "train.max_bad_steps=3", "checkpoint.every=1"});
  CHECK_THROWS_WITH(train(config), Catch::Contains("non-finite") && Catch::Contains("max_bad_steps"));
  // The last good checkpoint is still there and loads.
  auto good = load_latest_complete(dir / "run");
  REQUIRE(good.has_value());
  CHECK(good->step >= 1);
  // It was written after two skipped steps, and says so: resumed, the run stops at the next
  // step (the third in a row), as the uninterrupted run did, instead of counting from zero.
  TrainOptions resume;
  resume.resume = "auto";
  CHECK_THROWS_WITH(train(config, resume), Catch::Contains("3 consecutive steps"));
  CHECK(load_latest_complete(dir / "run")->step == good->step);
}

TEST_CASE("resume refuses unusable runs and sets newer checkpoints aside", "[resume]") {
  namespace fs = std::filesystem;
  TempDir dir("resume");
  train(config_for(dir / "run", {"train.steps=6", "checkpoint.every=2"}));
  // Resuming from step 2 starts a new branch: steps 4 and 6 are set aside, not picked up later.
  TrainOptions from_two;
  from_two.resume = dir / "run/checkpoints/step-00000002";
  CHECK(train(config_for(dir / "run", {"train.steps=3"}), from_two).start_step == 2);
  CHECK(fs::exists(dir / "run/checkpoints/step-00000004.stale"));
  CHECK(load_latest_complete(dir / "run")->step == 3);
  // Another run's checkpoint into a run directory that holds a run: refused.
  train(config_for(dir / "other", {"train.steps=2"}));
  from_two.resume = dir / "run/checkpoints/step-00000003";
  CHECK_THROWS_WITH(train(config_for(dir / "other", {"train.steps=4"}), from_two),
                    Catch::Contains("holds another run"));
  // Every checkpoint corrupt: --resume auto refuses instead of starting over.
  for (const auto& d : list_checkpoints(dir / "other")) fs::resize_file(d + "/model.safetensors", 10);
  TrainOptions automatic;
  automatic.resume = "auto";
  CHECK_THROWS_WITH(train(config_for(dir / "other", {"train.steps=4"}), automatic),
                    Catch::Contains("verifies"));
  CHECK(fs::exists(dir / "other/metrics.jsonl"));  // nothing was removed
}
