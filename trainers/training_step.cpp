#include "trainers/training_step.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>

#include <algorithm>

#include "models/registry.h"
#include "models/vae/autoencoder_stage.h"
#include "src/common/compat.h"
#include "src/common/cuda_graph.h"
#include "src/common/error.h"
#include "src/diffusion/gaussian_diffusion.h"
#include "src/diffusion/noise_schedule.h"
#include "src/distributed/communicator.h"
#include "src/distributed/grad_reducer.h"
#include "trainers/device_adamw.h"
#include "trainers/ema.h"
#include "trainers/grad_norm.h"
#include "trainers/stop_signal.h"

namespace ditlab {
namespace {

NamedParameters trainable_parameters(Backbone& model) {
  NamedParameters out;
  for (auto& p : model.named_parameters()) {
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  }
  return out;
}

std::vector<at::Tensor> tensors_of(const NamedParameters& named) {
  std::vector<at::Tensor> out;
  for (const auto& [name, p] : named) out.push_back(p);
  return out;
}

// The shadow's own initialisation is overwritten by the copy, so it must not consume the
// global generator (that would make rank 0's random stream differ from the others').
std::unique_ptr<Ema> make_ema(const Backbone& model, const ModelConfig& config) {
  at::Generator cpu_generator = at::detail::getDefaultCPUGenerator();
  const at::Tensor state = cpu_generator.get_state();
  auto ema = std::make_unique<Ema>(model, build_backbone(config));
  cpu_generator.set_state(state);
  return ema;
}

}  // namespace

double learning_rate_at(const TrainConfig& config, int64_t step) {
  if (config.lr_warmup_steps <= 0 || step >= config.lr_warmup_steps) return config.lr;
  return config.lr * static_cast<double>(step) / static_cast<double>(config.lr_warmup_steps);
}

TrainingStep::TrainingStep(const ExperimentConfig& config, std::shared_ptr<Backbone> model,
                           c10::Device device, Communicator& communicator, bool with_ema,
                           const AutoencoderStage* autoencoder)
    : config_(config),
      tc_(config_.train),
      device_(device),
      bf16_(tc_.precision == "bf16" || (tc_.precision == "auto" && compat::bf16_supported(device))),
      communicator_(communicator),
      autoencoder_(autoencoder),
      model_(std::move(model)),
      ema_(with_ema ? make_ema(*model_, config_.model) : nullptr),
      trainable_(trainable_parameters(*model_)),
      trainable_tensors_(tensors_of(trainable_)) {
  model_->to(device_);
  if (ema_) ema_->shadow().to(device_);
  // The optimizer is built on the moved parameters (to() keeps their identity, but the state
  // must live on the device from the first step).
  // One parameter group per (lr multiplier, weight decay): µP's hidden weights get lr / m and
  // weight decay * m, and the backbone may exempt parameters from weight decay. Groups are made
  // in the order their first parameter appears, so the standard parametrization has the decayed
  // group first.
  auto options = torch::optim::AdamWOptions(tc_.lr)
                     .betas({tc_.adam_beta1, tc_.adam_beta2})
                     .eps(tc_.adam_eps)
                     .weight_decay(tc_.weight_decay);
  std::vector<std::pair<OptimizerScaling, std::vector<at::Tensor>>> grouped;
  for (const auto& [name, p] : trainable_) {
    OptimizerScaling scaling = model_->optimizer_scaling(name);
    if (!model_->decays(name)) scaling.weight_decay = 0.0;
    auto same = [&](const auto& g) {
      return g.first.lr == scaling.lr && g.first.weight_decay == scaling.weight_decay;
    };
    auto it = std::find_if(grouped.begin(), grouped.end(), same);
    if (it == grouped.end()) it = grouped.insert(grouped.end(), {scaling, {}});
    it->second.push_back(p);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<double> group_lr_multipliers;  // per optimizer group: µP's lr multiplier
  for (const auto& [scaling, params] : grouped) {
    auto group_options = std::make_unique<torch::optim::AdamWOptions>(options);
    group_options->weight_decay(tc_.weight_decay * scaling.weight_decay);
    groups.emplace_back(params, std::move(group_options));
    group_lr_multipliers.push_back(scaling.lr);
  }
  optimizer_ = std::make_unique<torch::optim::AdamW>(std::move(groups), options);
  adamw_ = std::make_unique<DeviceAdamW>(*optimizer_, std::move(group_lr_multipliers), device_);
  diffusion_ = std::make_unique<GaussianDiffusion>(
      make_betas(config_.diffusion.schedule, config_.diffusion.steps, config_.diffusion.beta_start,
                 config_.diffusion.beta_end),
      config_.model.learn_sigma);
  diffusion_->to(device_);
  const auto float_on_device = at::TensorOptions().dtype(at::kFloat).device(device_);
  stop_input_ = at::zeros({}, float_on_device);
  ema_weight_ = at::zeros({}, float_on_device);
  if (tc_.cuda_graph) {
    auto refuse = [](const std::string& why) { throw ConfigError("train.cuda_graph: " + why); };
    if (!device_.is_cuda()) refuse("a CUDA graph records GPU work; this run is on " + device_.str());
    if (communicator_.distributed()) {
      refuse("the graph records one GPU's step; with " + std::to_string(communicator_.world_size()) +
             " ranks the gradient all-reduce would have to be recorded too (not supported)");
    }
    if (!adamw_->on_device()) {
      refuse("the recorded step needs the fused AdamW of LibTorch 2.4+; this is " + compat::torch_version());
    }
    if (!recordable_as_cuda_graph(config_.model.name)) {
      refuse(config_.model.name + " routes tokens with shapes that depend on the data, which a graph cannot record");
    }
    graph_ = std::make_unique<CudaGraph>(device_);
  }
  reducer_ = std::make_unique<GradReducer>(
      trainable_tensors_, communicator_,
      GradReducerOptions{tc_.grad_bucket_mb << 20,
                         tc_.grad_reduce_dtype == "bf16" ? at::kBFloat16 : at::ScalarType::Undefined,
                         tc_.grad_reduce_overlap});
  // Every rank starts from rank 0's weights (they agree by seed; this makes it a guarantee).
  communicator_.broadcast(model_->parameters());

  // Each sample's timestep, noise, label drop and flip come from its own (seed, step, global
  // index) generator, so this rank's shard is drawn at once and split into micro-batches.
  const BackboneShape shape = model_->shape();
  const std::vector<int64_t> input_shape = {shape.in_channels, shape.input_size, shape.input_size};
  const bool posterior = autoencoder_ != nullptr && autoencoder_->samples_posterior();
  const int64_t per_rank = tc_.global_batch_size / communicator_.world_size();
  draw_shard_ = [seed = static_cast<uint64_t>(tc_.seed), first = communicator_.rank() * per_rank,
                 per_rank, timesteps = config_.diffusion.steps, input_shape, posterior,
                 drop = config_.model.class_dropout_prob, flip = config_.data.random_flip,
                 pinned = device_.is_cuda()](int64_t step) {
    return draw_for_samples(seed, step, first, per_rank, timesteps, input_shape, drop, flip,
                            posterior ? at::IntArrayRef(input_shape) : at::IntArrayRef(), pinned);
  };
}

SampleDraws TrainingStep::draws_for(int64_t step) {
  SampleDraws draws = next_draws_.valid() && next_draws_step_ == step ? next_draws_.get() : draw_shard_(step);
  // A GPU step leaves the host idle while the device works: the next step's draws cost nothing
  // there. (A stale future, after a jump in steps, is joined by the assignment.)
  if (config_.data.prefetch > 0) {
    next_draws_step_ = step + 1;
    next_draws_ = std::async(std::launch::async, draw_shard_, step + 1);
  }
  return draws;
}

TrainingStep::~TrainingStep() = default;

namespace {

// `target` = `source` on the device: a new tensor where `target` is undefined, else into its
// memory (the inputs a recorded step reads).
void copy_into(at::Tensor& target, const at::Tensor& source, c10::Device device) {
  if (!source.defined()) return;
  if (!target.defined()) {
    target = source.to(device, /*non_blocking=*/true);
  } else {
    target.copy_(source, /*non_blocking=*/true);
  }
}

StepResult cloned(const StepResult& r) {
  StepResult out;
  out.loss = r.loss.clone();
  out.mse = r.mse.clone();
  out.vb = r.vb.clone();
  out.grad_norm = r.grad_norm.clone();
  for (const auto& [name, value] : r.extras) out.extras[name] = value.clone();
  out.flags = r.flags.clone();
  return out;
}

// Eager steps before the capture: libraries initialise, workspaces and the optimizer's state are
// allocated, outside the recording.
constexpr int64_t kGraphWarmupSteps = 2;

}  // namespace

StepResult TrainingStep::run(int64_t step, const Batch& batch) {
  // What changes from step to step besides the inputs: queued writes into the tensors the step
  // reads, so that a recorded step reads this step's values.
  stop_input_.fill_(StopSignals::requested() != 0 ? 1.0 : 0.0);
  adamw_->set_lr(learning_rate_at(tc_, step));
  if (ema_) {
    ema_decay_ = Ema::decay_at(step, tc_.ema_decay, tc_.ema_warmup);
    ema_weight_.fill_(1.0 - ema_decay_);
  }
  StepResult result;
  if (!graph_) {
    StepInputs inputs;
    stage_inputs(step, batch, inputs);
    result = device_step(inputs);
  } else {
    stage_inputs(step, batch, graph_inputs_);  // into the tensors the recorded step reads
    auto body = [this] { graph_outputs_ = device_step(graph_inputs_); };
    if (eager_steps_ < kGraphWarmupSteps) {
      graph_->warm_up(body);
      ++eager_steps_;
    } else {
      if (!graph_->captured()) {
        try {
          graph_->capture(body);
        } catch (const c10::Error& e) {
          throw Error(std::string("train.cuda_graph: the step could not be recorded as a CUDA "
                                  "graph (run without it): ") + e.what_without_backtrace());
        }
      }
      graph_->replay();
    }
    // The next replay overwrites the outputs; the caller reads them later.
    result = cloned(graph_outputs_);
  }
  result.flags_on_host = HostCopy(result.flags);
  return result;
}

torch::optim::AdamW& TrainingStep::optimizer() {
  adamw_->sync_to_host();
  return *optimizer_;
}

void TrainingStep::optimizer_state_changed() {
  // The recording must find the optimizer's tensors built by the warm-up, not build them itself.
  if (graph_ && eager_steps_ > 0) {
    throw Error("train.cuda_graph: the optimizer's state cannot change once steps have run");
  }
  adamw_->reload();
}

// This rank's shard on the device: one copy per tensor (asynchronous from page-locked memory);
// the micro-batches are views of it.
void TrainingStep::stage_inputs(int64_t step, const Batch& batch, StepInputs& inputs) {
  copy_into(inputs.images, batch.images, device_);
  copy_into(inputs.cached_latents, batch.cached_latents, device_);
  copy_into(inputs.labels, batch.labels, device_);
  const SampleDraws draws = draws_for(step);
  copy_into(inputs.draws.t, draws.t, device_);
  copy_into(inputs.draws.noise, draws.noise, device_);
  copy_into(inputs.draws.drop, draws.drop, device_);
  copy_into(inputs.draws.flip, draws.flip, device_);
  copy_into(inputs.draws.posterior_noise, draws.posterior_noise, device_);
}

StepResult TrainingStep::device_step(const StepInputs& inputs) {
  StepResult result = forward_backward(inputs);
  // Clip, then step the optimizer and the EMA, unless the loss or gradient is not finite: the
  // decision is a device tensor that the update reads.
  result.grad_norm = clip_grad_norm(trainable_tensors_, tc_.grad_clip);
  const at::Tensor finite = at::isfinite(result.loss) & at::isfinite(result.grad_norm);
  adamw_->step(finite.logical_not().to(at::kFloat));
  if (ema_ && device_.is_cpu()) {
    // On a CPU the flag costs nothing to read, and the two-pass update is the cheaper one.
    if (finite.item<bool>()) ema_->update(*model_, ema_decay_);
  } else if (ema_) {
    std::vector<at::Tensor> gradients;  // no longer needed: the EMA's scratch
    for (const auto& p : trainable_tensors_) gradients.push_back(p.grad());
    ema_->update(*model_, ema_weight_ * finite.to(at::kFloat), gradients);
  }
  result.flags = at::stack({finite, stop_flag_ > 0});
  return result;
}

// Gradients are dropped rather than zero-filled (as Python's zero_grad(set_to_none=True)):
// backward then writes them instead of adding to zeros, saving a pass over every gradient.
void TrainingStep::clear_gradients() {
  for (auto& p : trainable_tensors_) p.mutable_grad().reset();
}

// Forward and backward over every micro-batch of this rank's shard of the global batch, then
// the gradient sum over ranks. Flips and label drops happen on the device.
StepResult TrainingStep::forward_backward(const StepInputs& inputs) {
  clear_gradients();
  const int64_t per_rank = tc_.global_batch_size / communicator_.world_size();
  const int64_t micro_batch = per_rank / tc_.grad_accum_steps;
  // A cache of one posterior sample per image has nothing left to sample.
  const bool cached = inputs.cached_latents.defined();
  if (cached && autoencoder_ == nullptr) {
    throw ConfigError("a latent cache (data.name latents) needs its autoencoder: autoencoder.type kl");
  }
  const bool posterior = autoencoder_ != nullptr && autoencoder_->samples_posterior() &&
                         (!cached || inputs.cached_latents.size(2) == 2);
  StepResult sums;
  sums.loss = at::zeros({}, device_);
  sums.mse = at::zeros({}, device_);
  sums.vb = at::zeros({}, device_);
  for (int64_t micro = 0; micro < tc_.grad_accum_steps; ++micro) {
    const int64_t first = micro * micro_batch;  // within this rank's shard
    const SampleDraws draws = slice_draws(inputs.draws, first, micro_batch);
    const at::Tensor posterior_noise = posterior ? draws.posterior_noise : at::Tensor();
    const at::Tensor& flip = draws.flip;
    at::Tensor x0;
    if (cached) {  // the flip picks the mirrored image's latents; the stage scales and samples
      auto entries = inputs.cached_latents.narrow(0, first, micro_batch);
      auto chosen = at::where(flip.view({-1, 1, 1, 1, 1}), entries.select(1, entries.size(1) - 1),
                              entries.select(1, 0));
      x0 = autoencoder_->latents_from(chosen.select(1, 0),
                                      chosen.size(1) == 2 ? chosen.select(1, 1) : at::Tensor(),
                                      posterior_noise);
    } else {
      x0 = inputs.images.narrow(0, first, micro_batch);
      x0 = at::where(flip.view({-1, 1, 1, 1}), x0.flip({3}), x0);
      if (autoencoder_ != nullptr) x0 = autoencoder_->encode(x0, posterior_noise);
    }
    auto y = inputs.labels.narrow(0, first, micro_batch).masked_fill(draws.drop, config_.model.num_classes);
    const at::Tensor& t = draws.t;
    const at::Tensor& noise = draws.noise;

    GaussianDiffusion::Losses losses;
    at::Tensor aux_loss;
    std::map<std::string, at::Tensor> metrics;
    {
      compat::AutocastGuard autocast(device_.type(), at::kBFloat16, bf16_);
      auto x_t = diffusion_->q_sample(x0, t, noise);
      BackboneOutput out = model_->forward(x_t, diffusion_->model_timesteps(t), y);
      losses = diffusion_->losses_from_output(out.out, x0, x_t, t, noise);
      aux_loss = out.aux_loss;
      metrics = std::move(out.metrics);
    }
    // Sum over the micro-batch / global batch: the gradient equals that of the global mean.
    auto loss = losses.loss.sum() / static_cast<double>(tc_.global_batch_size);
    // The auxiliary loss is a mean per micro-batch; gradients are summed over micro-batches
    // and ranks, so its weight is one over their number.
    const double share = 1.0 / static_cast<double>(tc_.grad_accum_steps * communicator_.world_size());
    if (aux_loss.defined()) loss = loss + aux_loss * share;
    if (micro + 1 == tc_.grad_accum_steps) reducer_->expect_final_backward();
    loss.backward();
    sums.loss = sums.loss + losses.loss.detach().sum();
    sums.mse = sums.mse + losses.mse.detach().sum();
    sums.vb = sums.vb + losses.vb.detach().sum();
    if (aux_loss.defined()) metrics["aux_loss"] = aux_loss.detach() * share;
    for (auto& [name, value] : metrics) {
      auto& total = sums.extras[name];
      auto v = value.detach().to(device_, at::kDouble);
      total = total.defined() ? total + v : v;
    }
  }
  reducer_->reduce();
  // Parameters backward did not reach (experts no token chose) get zero gradients, as the
  // reducer gives them on several ranks, so that they step alike everywhere (weight decay,
  // moments) and alike under LibTorch 1.x and 2.x, whose zero_grad() differ.
  for (auto& p : trainable_tensors_) {
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
  }
  // One small all-reduce carries the loss sums and whether any rank was asked to stop, so
  // every rank takes the same decisions (skip a step, stop) from the same numbers.
  // The extras ride along (every rank has the same names: the same backbone on every rank).
  std::vector<at::Tensor> pieces = {sums.loss.view({1}), sums.mse.view({1}), sums.vb.view({1}),
                                    stop_input_.to(sums.loss.scalar_type()).view({1})};
  for (const auto& [name, value] : sums.extras) {
    pieces.push_back(value.to(sums.loss.scalar_type()).reshape({-1}));
  }
  at::Tensor shared = at::cat(pieces);
  communicator_.all_reduce_sum(shared);
  StepResult reduced;
  reduced.loss = shared[0];
  reduced.mse = shared[1];
  reduced.vb = shared[2];
  int64_t offset = 4;
  for (const auto& [name, value] : sums.extras) {
    reduced.extras[name] = shared.narrow(0, offset, value.numel()).view(value.sizes());
    offset += value.numel();
  }
  stop_flag_ = shared[3];
  return reduced;
}

}  // namespace ditlab
