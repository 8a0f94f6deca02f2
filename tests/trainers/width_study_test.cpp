#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "data/dataset.h"
#include "models/registry.h"
#include "src/common/error.h"
#include "src/config/config_loader.h"
#include "tests/test_support.h"
#include "trainers/experiment.h"
#include "trainers/width_study.h"

using namespace ditlab;
using namespace ditlab::testing;

namespace {
ExperimentConfig debug_dit() {
  ExperimentConfig config = load_experiment_config(source_dir() + "/configs/debug/dit.yaml", {});
  config.data.path = fashion_mnist_dir();
  config.data.image_size = 16;
  config.data.limit = 64;
  config.train.lr = 1e-2;  // large enough that 5 updates dominate the initial activations
  return config;
}
}  // namespace

TEST_CASE("coordinate check: activations keep their size across widths under µP and grow under SP", "[width_study][mup]") {
  ExperimentConfig config = debug_dit();
  auto data = make_dataset(config.data);
  config.model = model_config_for_data(config, *data);
  WidthStudy study;
  study.widths = {32, 64, 128};
  study.steps = 5;
  const auto rows = run_coord_check(config, *data, study);
  // Every kind is recorded for both parametrizations, every width and step.
  CHECK(rows.size() == 2 * 3 * 5 * 6);  // embed, attn_logits, attn, mlp, block, output
  double mup_worst = 0.0, sp_steepest = 0.0, sp_output = 0.0, mup_logits = 0.0, sp_logits = 0.0;
  for (const auto& s : coord_check_slopes(rows)) {
    if (s.step != study.steps - 1) continue;
    INFO(s.parametrization << " " << s.kind << " slope " << s.slope);
    if (s.kind == "attn_logits") {
      (s.parametrization == "mup" ? mup_logits : sp_logits) = s.slope;
      continue;
    }
    if (s.parametrization == "mup") mup_worst = std::max(mup_worst, std::abs(s.slope));
    if (s.parametrization == "sp") sp_steepest = std::max(sp_steepest, s.slope);
    if (s.parametrization == "sp" && s.kind == "output") sp_output = s.slope;
  }
  // Measured: µP within +-0.08 (flat), SP's attention and MLP outputs ~ width^0.5 and the
  // output ~ width^1 (Adam moves every weight by ~lr, and a fan-in of n sums n such moves).
  CHECK(mup_worst < 0.2);
  CHECK(sp_steepest > 0.4);
  CHECK(sp_output > 0.6);
  // Attention logits: q.k of random q, k is ~sqrt(head_dim), so 1/head_dim makes them vanish
  // at initialisation (-0.5) and keeps them bounded once q and k align; 1/sqrt(head_dim) lets
  // them grow. Measured: µP -0.48, SP +0.21.
  CHECK(mup_logits < 0.0);
  CHECK(sp_logits > mup_logits + 0.4);
  // At the base width (the first), both parametrizations are the same model and see the same data.
  for (const auto& a : rows) {
    if (a.parametrization != "mup" || a.width != 32) continue;
    for (const auto& b : rows) {
      if (b.parametrization == "sp" && b.width == 32 && b.step == a.step && b.kind == a.kind) {
        CHECK(a.mean_abs == b.mean_abs);
      }
    }
  }
}

TEST_CASE("the slope of a coordinate check is the exponent of a power law", "[width_study][mup]") {
  std::vector<CoordCheckRow> rows;
  for (int64_t w : {16, 32, 64, 128}) {
    rows.push_back({"sp", w, 2, "mlp", 0.3 * std::pow(static_cast<double>(w), 0.5)});
    rows.push_back({"mup", w, 2, "mlp", 0.7});
    rows.push_back({"mup", w, 0, "output", w == 64 ? 0.0 : 1.0});  // zero somewhere: left out
  }
  const auto slopes = coord_check_slopes(rows);
  REQUIRE(slopes.size() == 2);
  for (const auto& s : slopes) CHECK(s.slope == Approx(s.parametrization == "sp" ? 0.5 : 0.0).margin(1e-12));
}

TEST_CASE("a learning-rate sweep trains each width and rate and flags a diverged run", "[width_study][mup]") {
  ExperimentConfig config = debug_dit();
  config.train.max_bad_steps = 1000;  // let the sweep see the divergence instead of stopping
  auto data = make_dataset(config.data);
  config.model = model_config_for_data(config, *data);
  WidthStudy study;
  study.widths = {32, 64};
  study.mup = {true};
  study.steps = 10;
  study.lrs = {1e-3, 1e6};
  const auto rows = run_lr_sweep(config, *data, study);
  REQUIRE(rows.size() == 4);
  for (const auto& r : rows) {
    INFO(r.width << " " << r.lr << " " << r.loss);
    if (r.lr == 1e-3) CHECK((std::isfinite(r.loss) && r.loss < 1.0));
    if (r.lr == 1e6) CHECK(std::isnan(r.loss));
  }
  study.lrs.clear();
  CHECK_THROWS_AS(run_lr_sweep(config, *data, study), UsageError);
}
