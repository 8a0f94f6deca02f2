// Width studies for µP: one experiment trained at several widths (model.hidden_size), under µP
// and under the standard parametrization (SP), from the same seed on the same batches.
//   coordinate check: the mean |activation| of each layer kind over the first steps; under µP
//     it stays flat as the width grows, under SP it grows once training moves the weights.
//   learning-rate sweep: the loss reached per learning rate; under µP the best learning rate
//     stays put as the width grows, under SP it shifts.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "src/config/experiment_config.h"

namespace ditlab {

struct WidthStudy {
  std::vector<int64_t> widths;    // model.hidden_size values; each divisible by model.num_heads
  std::vector<bool> mup = {true, false};  // the parametrizations to run (true: µP)
  int64_t steps = 5;
  std::vector<double> lrs;        // learning-rate sweep only
  // Called after every run (parametrization, width[, lr]) with a one-line summary.
  std::function<void(const std::string&)> progress;
};

// Throws a UsageError naming what `study` lacks: two widths, a step, a parametrization, and for
// a learning-rate sweep (`sweep`) learning rates. Before anything is written.
void check_study(const WidthStudy& study, bool sweep);

// The experiment at one width: hidden_size = width, µP on or off, mup.base_width kept (or the
// first width of the study when the config leaves it 0).
ExperimentConfig config_at_width(const ExperimentConfig& config, int64_t width, bool mup,
                                 int64_t default_base_width);

struct CoordCheckRow {
  std::string parametrization;  // "mup" or "sp"
  int64_t width = 0;
  int64_t step = 0;  // 0: at initialisation (the forward of the first step)
  std::string kind;  // ActivationProbe kind: embed, attn, mlp, block, output, ...
  double mean_abs = 0.0;
};
std::vector<CoordCheckRow> run_coord_check(const ExperimentConfig& config, const Dataset& data,
                                           const WidthStudy& study);

// The exponent of mean |activation| in width (least-squares slope of log mean_abs against
// log width) per parametrization, kind and step; kinds that are zero at some width are left out.
struct CoordSlope {
  std::string parametrization, kind;
  int64_t step = 0;
  double slope = 0.0;
};
std::vector<CoordSlope> coord_check_slopes(const std::vector<CoordCheckRow>& rows);

struct SweepRow {
  std::string parametrization;
  int64_t width = 0;
  double lr = 0.0;
  double loss = 0.0;  // mean training loss over the last fifth of the steps; NaN if diverged
};
std::vector<SweepRow> run_lr_sweep(const ExperimentConfig& config, const Dataset& data,
                                   const WidthStudy& study);

}  // namespace ditlab
