#include "trainers/training_step.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>

#include <algorithm>

#include "models/registry.h"
#include "models/vae/autoencoder_stage.h"
#include "src/common/compat.h"
#include "src/common/error.h"
#include "src/diffusion/gaussian_diffusion.h"
#include "src/diffusion/noise_schedule.h"
#include "src/distributed/communicator.h"
#include "src/distributed/grad_reducer.h"
#include "trainers/ema.h"
#include "trainers/grad_norm.h"
#include "trainers/multi_tensor_adamw.h"
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
  if (config.lr_warmup_steps <= 0 || step + 1 >= config.lr_warmup_steps) return config.lr;
  return config.lr * static_cast<double>(step + 1) / static_cast<double>(config.lr_warmup_steps);
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
  for (const auto& [scaling, params] : grouped) {
    auto group_options = std::make_unique<torch::optim::AdamWOptions>(options);
    group_options->weight_decay(tc_.weight_decay * scaling.weight_decay);
    groups.emplace_back(params, std::move(group_options));
    group_lr_multipliers_.push_back(scaling.lr);
  }
  optimizer_ = std::make_unique<torch::optim::AdamW>(std::move(groups), options);
  diffusion_ = std::make_unique<GaussianDiffusion>(
      make_betas(config_.diffusion.schedule, config_.diffusion.steps, config_.diffusion.beta_start,
                 config_.diffusion.beta_end),
      config_.model.learn_sigma);
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

StepResult TrainingStep::run(int64_t step, const Batch& batch) {
  StepResult result = forward_backward(step, batch);
  // Clip, then step the optimizer and the EMA, unless the loss or gradient is not finite. The
  // finiteness and the stop flag come back in one read: the step's only host synchronisation.
  result.grad_norm = clip_grad_norm(trainable_tensors_, tc_.grad_clip);
  const at::Tensor flags =
      at::stack({at::isfinite(result.loss) & at::isfinite(result.grad_norm), stop_flag_ > 0})
          .to(at::kCPU);
  result.stop_requested = flags[1].item<bool>();
  if (!flags[0].item<bool>()) {
    clear_gradients();
    return result;
  }
  result.applied = true;
  // The schedule scales each group's own multiplier (µP), never overwrites it.
  const double lr = learning_rate_at(tc_, step);
  auto& param_groups = optimizer_->param_groups();
  for (size_t g = 0; g < param_groups.size(); ++g) {
    static_cast<torch::optim::AdamWOptions&>(param_groups[g].options()).lr(lr * group_lr_multipliers_[g]);
  }
  multi_tensor_adamw_step(*optimizer_);
  if (ema_) ema_->update(*model_, Ema::decay_at(step, tc_.ema_decay, tc_.ema_warmup));
  return result;
}

// Gradients are dropped rather than zero-filled (as Python's zero_grad(set_to_none=True)):
// backward then writes them instead of adding to zeros, saving a pass over every gradient.
void TrainingStep::clear_gradients() {
  for (auto& p : trainable_tensors_) p.mutable_grad().reset();
}

// Forward and backward over every micro-batch of this rank's shard of the global batch of
// `step`, then the gradient sum over ranks. Copies to the device are asynchronous from
// page-locked memory (and ordinary copies otherwise); flips and label drops happen on the device.
StepResult TrainingStep::forward_backward(int64_t step, const Batch& batch) {
  clear_gradients();
  const int64_t per_rank = tc_.global_batch_size / communicator_.world_size();
  const int64_t micro_batch = per_rank / tc_.grad_accum_steps;
  // A cache of one posterior sample per image has nothing left to sample.
  const bool cached = batch.cached_latents.defined();
  if (cached && autoencoder_ == nullptr) {
    throw ConfigError("a latent cache (data.name latents) needs its autoencoder: autoencoder.type kl");
  }
  const bool posterior = autoencoder_ != nullptr && autoencoder_->samples_posterior() &&
                         (!cached || batch.cached_latents.size(2) == 2);
  auto to_device = [&](const at::Tensor& t) { return t.to(device_, /*non_blocking=*/true); };
  const SampleDraws shard_draws = draws_for(step);
  StepResult sums;
  sums.loss = at::zeros({}, device_);
  sums.mse = at::zeros({}, device_);
  sums.vb = at::zeros({}, device_);
  for (int64_t micro = 0; micro < tc_.grad_accum_steps; ++micro) {
    const int64_t first = micro * micro_batch;  // within this rank's shard
    const SampleDraws draws = slice_draws(shard_draws, first, micro_batch);
    const at::Tensor posterior_noise = posterior ? to_device(draws.posterior_noise) : at::Tensor();
    const at::Tensor flip = to_device(draws.flip);
    at::Tensor x0;
    if (cached) {  // the flip picks the mirrored image's latents; the stage scales and samples
      auto entries = to_device(batch.cached_latents.narrow(0, first, micro_batch));
      auto chosen = at::where(flip.view({-1, 1, 1, 1, 1}), entries.select(1, entries.size(1) - 1),
                              entries.select(1, 0));
      x0 = autoencoder_->latents_from(chosen.select(1, 0),
                                      chosen.size(1) == 2 ? chosen.select(1, 1) : at::Tensor(),
                                      posterior_noise);
    } else {
      x0 = to_device(batch.images.narrow(0, first, micro_batch));
      x0 = at::where(flip.view({-1, 1, 1, 1}), x0.flip({3}), x0);
      if (autoencoder_ != nullptr) x0 = autoencoder_->encode(x0, posterior_noise);
    }
    auto y = to_device(batch.labels.narrow(0, first, micro_batch))
                 .masked_fill(to_device(draws.drop), config_.model.num_classes);
    auto t = to_device(draws.t);
    auto noise = to_device(draws.noise);

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
                                    at::full({1}, StopSignals::requested() != 0 ? 1.0 : 0.0,
                                             sums.loss.options())};
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
