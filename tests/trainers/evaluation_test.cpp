// dit train-classifier and dit eval on Fashion-MNIST, small and short.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "data/dataset.h"
#include "models/classifier/feature_network.h"
#include "src/common/error.h"
#include "src/config/config_loader.h"
#include "src/io/atomic_file.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"
#include "trainers/classifier_trainer.h"
#include "trainers/evaluation.h"
#include "trainers/trainer.h"

using namespace ditlab;
using ditlab::testing::TempDir;

TEST_CASE("a short classifier run learns Fashion-MNIST and dit eval measures a run with it", "[eval]") {
  TempDir dir("eval");
  const auto classifier_config = load_experiment_config(
      ditlab::testing::source_dir() + "/configs/eval/fashion_mnist_classifier.yaml",
      {"data.path=" + ditlab::testing::fashion_mnist_dir(), "data.limit=3000", "classifier.steps=80",
       "classifier.channels=[16,32,32]", "classifier.eval_images=500", "train.log_every=20", "run.dir=" + dir / "classifier"});
  const ClassifierTrainSummary classifier = train_classifier(classifier_config, "test");
  INFO("held-out accuracy " << classifier.held_out_accuracy);
  CHECK(classifier.held_out_accuracy > 0.5);  // 10 classes: chance is 0.1
  CHECK(classifier.last_loss < classifier.first_loss);
  CHECK_THROWS_WITH(train_classifier(classifier_config, "test"), Catch::Contains("already holds a classifier"));

  train(load_experiment_config(ditlab::testing::source_dir() + "/configs/debug/dit.yaml",
                               {"run.dir=" + dir / "run", "train.steps=10", "checkpoint.every=5",
                                "sample.at_end=false"}));
  ExperimentConfig config = load_experiment_config(dir / "run/config.yaml");
  apply_overrides(config, {"eval.classifier=" + classifier.weights_path, "eval.reference_dir=" + dir / "reference",
                           "eval.num_samples=60", "eval.batch_size=30", "sample.steps=3"});
  EvalOptions options;
  options.run_dir = dir / "run";
  const EvalResult first = evaluate_run(config, options);
  CHECK(first.fid > 0);
  CHECK(first.reference_images == 256);  // the run's data.limit
  CHECK(first.precision >= 0);
  CHECK(first.recall <= 1);
  CHECK(first.inception_score >= 1);
  CHECK(first.accuracy >= 0);
  CHECK(first.step == 10);
  CHECK(first.training_flops == Approx(6.0 * first.gmacs_per_image * 1e9 * 10 * 16));
  const std::string json = read_file(dir / "run/eval.json");
  CHECK_THAT(json, Catch::Contains("\"fid\": ") && Catch::Contains("\"num_samples\": 60"));
  // The reference statistics are cached once; the same evaluation gives the same numbers.
  REQUIRE(std::distance(std::filesystem::directory_iterator(dir / "reference"), {}) == 1);
  const EvalResult second = evaluate_run(config, options);
  CHECK(second.fid == first.fid);
  CHECK(second.precision == first.precision);
  std::ifstream history(dir / "run/evals.jsonl");
  CHECK(std::count(std::istreambuf_iterator<char>(history), {}, '\n') == 2);
  {
    // Precision / recall's real points are n of the 256 reference images spread evenly
    // (position floor(j * 256 / n)), cached per n; measured here again, image by image.
    auto network = make_feature_network(config.eval, c10::Device(c10::kCPU));
    auto data = make_dataset(config.data);
    auto expected = [&](int64_t n) {
      std::vector<int64_t> indices;
      for (int64_t j = 0; j < n; ++j) indices.push_back(j * 256 / n);
      CHECK(indices.back() > 250);  // the spread reaches the last images (classes)
      return network->measure(data->get_batch(indices).images).features;
    };
    const std::string cached = std::filesystem::directory_iterator(dir / "reference")->path().string();
    const auto sixty = read_safetensors(cached).tensors.at("features.60");
    CHECK(at::allclose(sixty, expected(60), 1e-4, 1e-5));
    ExperimentConfig ninety = config;
    apply_overrides(ninety, {"eval.num_samples=90"});
    evaluate_run(ninety, options);
    const auto both = read_safetensors(cached).tensors;
    CHECK(at::allclose(both.at("features.90"), expected(90), 1e-4, 1e-5));
    CHECK(at::equal(both.at("features.60"), sixty));  // what ran before changes nothing
  }
  // A kept checkpoint's weights: their own step and FID, a line of evals.jsonl, eval.json untouched.
  options.checkpoint_step = 5;
  const EvalResult at_five = evaluate_run(config, options);
  CHECK(at_five.step == 5);
  CHECK(at_five.fid != first.fid);
  CHECK_THAT(read_file(dir / "run/eval.json"), Catch::Contains("\"step\": 10, \"checkpoint\": false"));
  const std::string lines = read_file(dir / "run/evals.jsonl");
  CHECK(std::count(lines.begin(), lines.end(), '\n') == 4);
  CHECK_THAT(lines, Catch::Contains("\"step\": 5, \"checkpoint\": true"));
  options.checkpoint_step = 7;
  CHECK_THROWS_WITH(evaluate_run(config, options), Catch::Contains("checkpoints/step-00000007/ema.safetensors") &&
                                                       Catch::Contains("checkpoint.keep"));
  options.checkpoint_step = -1;
  // It is the cached file that is read: shifting its mean raises the FID by |shift|^2.
  const std::string cached = std::filesystem::directory_iterator(dir / "reference")->path().string();
  auto file = read_safetensors(cached);
  file.tensors["mean"] = file.tensors["mean"] + 10.0;
  write_safetensors(cached, file.tensors, file.metadata);
  const double shifted = evaluate_run(config, options).fid;
  CHECK(shifted > first.fid + 10.0 * 10.0 * file.tensors["mean"].size(0) * 0.5);
  // Guidance changes the samples, hence the FID.
  apply_overrides(config, {"sample.cfg_scale=1.0"});
  CHECK(evaluate_run(config, options).fid != first.fid);

  // Errors name what is missing.
  options.run_dir = dir / "nothing";
  CHECK_THROWS_WITH(evaluate_run(config, options), Catch::Contains("nothing/ema.safetensors"));
}
