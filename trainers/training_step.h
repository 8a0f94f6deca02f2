// One optimizer step of the shared trainer: forward and backward over the micro-batches of this
// rank's shard, the gradient all-reduce, clipping, AdamW and the EMA. `dit train` runs it in its
// loop; `dit bench` times it alone, so the benchmark measures exactly what training runs.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "models/backbone.h"
#include "src/config/experiment_config.h"
#include "trainers/sample_draws.h"

namespace torch::optim {
class AdamW;
}

namespace ditlab {

class AutoencoderStage;
class Communicator;
class Ema;
class GradReducer;
class GaussianDiffusion;

using NamedParameters = std::vector<std::pair<std::string, at::Tensor>>;

// Sums over one step's global batch (all micro-batches and ranks), on the device.
struct StepResult {
  at::Tensor loss, mse, vb;
  at::Tensor grad_norm;  // before clipping
  // The backbone's auxiliary loss (as it enters the objective) and its metrics, summed.
  std::map<std::string, at::Tensor> extras;
  bool applied = false;         // false: a non-finite loss or gradient, the update was skipped
  bool stop_requested = false;  // some rank received SIGINT / SIGTERM
};

// The learning rate of step `step` (0-based): train.lr after a linear warm-up of
// train.lr_warmup_steps steps (lr * (step + 1) / N until then), as DiM's LambdaLR.
double learning_rate_at(const TrainConfig& config, int64_t step);

class TrainingStep {
 public:
  // `model` is built and initialised by the caller; it is moved to `device` and broadcast from
  // rank 0. `with_ema` keeps an EMA shadow (rank 0 of a training run). With an `autoencoder`
  // (on `device`, owned by the caller) batches hold images that are encoded after the flip.
  TrainingStep(const ExperimentConfig& config, std::shared_ptr<Backbone> model, c10::Device device,
               Communicator& communicator, bool with_ema, const AutoencoderStage* autoencoder = nullptr);
  ~TrainingStep();

  // Step `step` (0-based) on this rank's shard of the global batch (CPU tensors; in page-locked
  // memory they reach a GPU asynchronously). With data.prefetch > 0, the per-sample draws of
  // step + 1 are drawn on a background thread meanwhile.
  StepResult run(int64_t step, const Batch& batch);

  Backbone& model() { return *model_; }
  Ema* ema() { return ema_.get(); }  // null without an EMA
  torch::optim::AdamW& optimizer() { return *optimizer_; }
  const NamedParameters& trainable() const { return trainable_; }
  const GradReducer& reducer() const { return *reducer_; }
  bool bf16() const { return bf16_; }

 private:
  StepResult forward_backward(int64_t step, const Batch& batch);
  void clear_gradients();
  // The draws of this rank's shard of `step`: prepared during the previous step, or drawn now.
  SampleDraws draws_for(int64_t step);

  const ExperimentConfig config_;
  const TrainConfig& tc_;
  const c10::Device device_;
  const bool bf16_;
  Communicator& communicator_;
  const AutoencoderStage* autoencoder_;
  std::shared_ptr<Backbone> model_;
  std::unique_ptr<Ema> ema_;
  const NamedParameters trainable_;  // listed once: the step uses them every time
  const std::vector<at::Tensor> trainable_tensors_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::vector<double> group_lr_multipliers_;  // per optimizer group: µP's lr multiplier
  std::unique_ptr<GaussianDiffusion> diffusion_;
  std::unique_ptr<GradReducer> reducer_;
  at::Tensor stop_flag_;  // > 0 when some rank was asked to stop (summed over ranks), on the device
  // Copies what it needs, and the background task holds its own copy: the task depends on no
  // member, so the order of destruction does not matter.
  std::function<SampleDraws(int64_t step)> draw_shard_;
  std::future<SampleDraws> next_draws_;
  int64_t next_draws_step_ = -1;
};

}  // namespace ditlab
