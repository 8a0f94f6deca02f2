#include "trainers/width_study.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <algorithm>
#include <map>
#include <tuple>

#include "models/mup/activation_probe.h"
#include "models/registry.h"
#include "src/common/error.h"
#include "src/distributed/communicator.h"
#include "trainers/experiment.h"
#include "trainers/training_step.h"

namespace ditlab {
namespace {

const char* name_of(bool mup) { return mup ? "mup" : "sp"; }

// Batch `step` of the study: consecutive images, the same for every width and learning rate.
Batch batch_at(const Dataset& data, int64_t step, int64_t batch_size) {
  std::vector<int64_t> indices(static_cast<size_t>(batch_size));
  for (int64_t i = 0; i < batch_size; ++i) indices[i] = (step * batch_size + i) % data.size();
  return data.get_batch(indices);
}

// Trains `config` for `steps` steps on one process; `each_step` sees the step's result and the
// activations its forward pass recorded.
void train_steps(const ExperimentConfig& config, const Dataset& data, int64_t steps,
                 const std::function<void(int64_t, const StepResult&,
                                          const std::map<std::string, double>&)>& each_step) {
  if (config.train.grad_accum_steps != 1) {
    throw ConfigError("width studies run one micro-batch per step: set train.grad_accum_steps=1");
  }
  torch::manual_seed(static_cast<uint64_t>(config.train.seed));
  auto model = build_backbone(config.model);
  Communicator communicator(DistEnv{}, "auto", std::chrono::seconds(60));
  TrainingStep step(config, model, select_device(config.train.device), communicator,
                    /*with_ema=*/false);
  step.model().train();
  for (int64_t s = 0; s < steps; ++s) {
    const Batch batch = batch_at(data, s, config.train.global_batch_size);
    std::map<std::string, double> activations;
    StepResult result;
    {
      ActivationProbe probe;
      result = step.run(s, batch);
      activations = probe.means();
    }
    each_step(s, result, activations);
  }
}

}  // namespace

void check_study(const WidthStudy& study, bool sweep) {
  if (study.widths.size() < 2) throw UsageError("a width study needs at least two widths");
  if (study.steps < 1) throw UsageError("a width study needs at least one step");
  if (study.mup.empty()) throw UsageError("a width study needs a parametrization (mup, sp)");
  if (sweep && study.lrs.empty()) throw UsageError("a learning-rate sweep needs learning rates");
}

ExperimentConfig config_at_width(const ExperimentConfig& config, int64_t width, bool mup,
                                 int64_t default_base_width) {
  ExperimentConfig c = config;
  c.model.hidden_size = width;
  c.model.mup.enabled = mup;
  if (c.model.mup.base_width == 0) c.model.mup.base_width = default_base_width;
  return c;
}

std::vector<CoordCheckRow> run_coord_check(const ExperimentConfig& config, const Dataset& data,
                                           const WidthStudy& study) {
  check_study(study, false);
  std::vector<CoordCheckRow> rows;
  for (bool mup : study.mup) {
    for (int64_t width : study.widths) {
      const ExperimentConfig c = config_at_width(config, width, mup, study.widths.front());
      double last_loss = 0.0;
      train_steps(c, data, study.steps, [&](int64_t s, const StepResult& r, const auto& activations) {
        for (const auto& [kind, value] : activations) rows.push_back({name_of(mup), width, s, kind, value});
        last_loss = r.loss.item<double>() / static_cast<double>(c.train.global_batch_size);
      });
      if (study.progress) {
        study.progress(std::string(name_of(mup)) + " width " + std::to_string(width) +
                       ": last loss " + std::to_string(last_loss));
      }
    }
  }
  return rows;
}

std::vector<CoordSlope> coord_check_slopes(const std::vector<CoordCheckRow>& rows) {
  struct Key {
    std::string parametrization, kind;
    int64_t step;
    bool operator<(const Key& o) const {
      return std::tie(parametrization, kind, step) < std::tie(o.parametrization, o.kind, o.step);
    }
  };
  std::map<Key, std::vector<std::pair<double, double>>> points;  // (log width, log mean_abs)
  std::map<Key, bool> has_zero;
  for (const auto& r : rows) {
    const Key key{r.parametrization, r.kind, r.step};
    if (!(r.mean_abs > 0) || !std::isfinite(r.mean_abs)) {
      has_zero[key] = true;
      continue;
    }
    points[key].emplace_back(std::log(static_cast<double>(r.width)), std::log(r.mean_abs));
  }
  std::vector<CoordSlope> slopes;
  for (const auto& [key, xy] : points) {
    if (has_zero[key] || xy.size() < 2) continue;
    double mx = 0, my = 0;
    for (const auto& [x, y] : xy) mx += x, my += y;
    mx /= static_cast<double>(xy.size());
    my /= static_cast<double>(xy.size());
    double sxy = 0, sxx = 0;
    for (const auto& [x, y] : xy) sxy += (x - mx) * (y - my), sxx += (x - mx) * (x - mx);
    slopes.push_back({key.parametrization, key.kind, key.step, sxy / sxx});
  }
  return slopes;
}

std::vector<SweepRow> run_lr_sweep(const ExperimentConfig& config, const Dataset& data,
                                   const WidthStudy& study) {
  check_study(study, true);
  std::vector<SweepRow> rows;
  const int64_t tail = std::max<int64_t>(1, study.steps / 5);
  for (bool mup : study.mup) {
    for (int64_t width : study.widths) {
      for (double lr : study.lrs) {
        ExperimentConfig c = config_at_width(config, width, mup, study.widths.front());
        c.train.lr = lr;
        double sum = 0.0;
        bool diverged = false;
        train_steps(c, data, study.steps, [&](int64_t s, const StepResult& r, const auto&) {
          if (!r.applied()) diverged = true;
          if (s >= study.steps - tail) {
            sum += r.loss.item<double>() / static_cast<double>(c.train.global_batch_size);
          }
        });
        const double loss = diverged || !std::isfinite(sum) ? std::numeric_limits<double>::quiet_NaN()
                                                            : sum / static_cast<double>(tail);
        rows.push_back({name_of(mup), width, lr, loss});
        if (study.progress) {
          study.progress(std::string(name_of(mup)) + " width " + std::to_string(width) + " lr " +
                         std::to_string(lr) + ": loss " + std::to_string(loss));
        }
      }
    }
  }
  return rows;
}

}  // namespace ditlab
