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
#include "src/common/host_copy.h"
#include "models/backbone.h"
#include "src/config/experiment_config.h"
#include "trainers/sample_draws.h"

namespace torch::optim {
class AdamW;
}

namespace ditlab {

class AutoencoderStage;
class Communicator;
class CudaGraph;
class DeviceAdamW;
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
  // [update applied, some rank received SIGINT / SIGTERM] (bools), on the device, and its copy
  // on its way to the host. A step that is not applied (a non-finite loss or gradient) left the
  // weights, the optimizer and the EMA as they were.
  at::Tensor flags;
  HostCopy flags_on_host;

  // These wait for the step's flags (not for work queued after them).
  bool applied() const { return flags_on_host.get()[0].item<bool>(); }
  bool stop_requested() const { return flags_on_host.get()[1].item<bool>(); }
};

// The learning rate of step `step` (0-based): train.lr after a linear warm-up of
// train.lr_warmup_steps steps (lr * step / N until then, 0 at step 0), as DiM's LambdaLR.
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
  // step + 1 are drawn on a background thread meanwhile. On a GPU nothing is read back to the
  // host (LibTorch 2.4+; a backbone may read, as dit-moe's routing); before 2.4 (no fused AdamW)
  // the skip flag is read before the update, and on CPUs, where it costs nothing, for the EMA.
  // With train.cuda_graph the first steps run as they are, then the step is recorded as a CUDA
  // graph and replayed.
  StepResult run(int64_t step, const Batch& batch);

  Backbone& model() { return *model_; }
  Ema* ema() { return ema_.get(); }  // null without an EMA
  // The optimizer, its state current (the fused update counts steps on the device).
  torch::optim::AdamW& optimizer();
  // After the optimizer's state was replaced (a restore); before the first step.
  void optimizer_state_changed();
  const NamedParameters& trainable() const { return trainable_; }
  const GradReducer& reducer() const { return *reducer_; }
  bool bf16() const { return bf16_; }

 private:
  // One step's inputs on the device: this rank's shard of the batch and its per-sample draws.
  struct StepInputs {
    at::Tensor images, cached_latents, labels;
    SampleDraws draws;
  };
  void stage_inputs(int64_t step, const Batch& batch, StepInputs& inputs);
  // Forward, backward, clipping, AdamW and the EMA from inputs on the device, reading nothing
  // back (what a CUDA graph records).
  StepResult device_step(const StepInputs& inputs);
  StepResult forward_backward(const StepInputs& inputs);
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
  std::unique_ptr<DeviceAdamW> adamw_;
  std::unique_ptr<GaussianDiffusion> diffusion_;
  std::unique_ptr<GradReducer> reducer_;
  // Written before each step, read by it (so that a recorded step reads this step's values).
  at::Tensor stop_input_;  // this rank's SIGINT / SIGTERM, 0 or 1
  double ema_decay_ = 0.0;  // this step's EMA decay
  at::Tensor ema_weight_;   // 1 - the EMA decay of this step
  at::Tensor stop_flag_;   // > 0 when some rank was asked to stop (summed over ranks)
  // CUDA graph (train.cuda_graph): the recorded step reads these inputs and writes those outputs.
  std::unique_ptr<CudaGraph> graph_;
  int64_t eager_steps_ = 0;
  StepInputs graph_inputs_;
  StepResult graph_outputs_;
  // Copies what it needs, and the background task holds its own copy: the task depends on no
  // member, so the order of destruction does not matter.
  std::function<SampleDraws(int64_t step)> draw_shard_;
  std::future<SampleDraws> next_draws_;
  int64_t next_draws_step_ = -1;
};

}  // namespace ditlab
