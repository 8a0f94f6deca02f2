#include "trainers/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <csignal>

#include "data/prefetch_loader.h"
#include "models/registry.h"
#include "src/common/compat.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/progress.h"
#include "src/config/config_loader.h"
#include "src/diffusion/gaussian_diffusion.h"
#include "src/diffusion/noise_schedule.h"
#include "src/distributed/communicator.h"
#include "src/distributed/grad_reducer.h"
#include "src/io/module_weights.h"
#include "trainers/checkpoint.h"
#include "trainers/ema.h"
#include "trainers/experiment.h"
#include "trainers/grad_norm.h"
#include "trainers/log_window.h"
#include "trainers/metrics_sink.h"
#include "trainers/optimizer_state.h"
#include "trainers/run_directory.h"
#include "trainers/sample_draws.h"
#include "trainers/sampling.h"
#include "trainers/stop_signal.h"

namespace ditlab {
namespace {

// Sums over one step's global batch (all micro-batches), on the device.
struct StepLosses {
  at::Tensor loss, mse, vb;
  // The backbone's auxiliary loss (mean over micro-batches and ranks, as it enters the
  // objective) and its metrics (summed over micro-batches and ranks), for the log.
  std::map<std::string, at::Tensor> extras;
};

// Everything one training run holds; run() is the loop.
class Trainer {
 public:
  Trainer(const ExperimentConfig& config, std::shared_ptr<Dataset> dataset, c10::Device device,
          Communicator& communicator, bool resuming)
      : config_(config),
        tc_(config_.train),
        device_(device),
        bf16_(tc_.precision == "bf16" || (tc_.precision == "auto" && compat::bf16_supported(device))),
        dataset_(std::move(dataset)),
        model_(build_model(config_, resuming)),
        ema_(communicator.is_main() ? make_ema(*model_, config_.model) : nullptr),
        trainable_(trainable_parameters(*model_)),
        trainable_tensors_(tensors_of(trainable_)),
        optimizer_(trainable_tensors_, torch::optim::AdamWOptions(tc_.lr)
                                            .betas({tc_.adam_beta1, tc_.adam_beta2})
                                            .eps(tc_.adam_eps)
                                            .weight_decay(tc_.weight_decay)),
        diffusion_(make_betas(config_.diffusion.schedule, config_.diffusion.steps,
                              config_.diffusion.beta_start, config_.diffusion.beta_end),
                   config_.model.learn_sigma),
        loader_(dataset_, EpochSampler(dataset_->size(), tc_.global_batch_size,
                                       static_cast<uint64_t>(tc_.seed)),
                config_.data.prefetch, communicator.rank(), communicator.world_size()),
        communicator_(communicator),
        reducer_(trainable_tensors_, communicator,
                 GradReducerOptions{tc_.grad_bucket_mb << 20,
                                    tc_.grad_reduce_dtype == "bf16" ? at::kBFloat16
                                                                     : at::ScalarType::Undefined,
                                    tc_.grad_reduce_overlap}) {
    model_->to(device_);
    if (ema_) ema_->shadow().to(device_);
    // Every rank starts from rank 0's weights (they agree by seed; this makes it a guarantee).
    communicator_.broadcast(model_->parameters());
    if (communicator_.is_main()) metrics_ = std::make_unique<JsonlSink>(config_.run.dir + "/metrics.jsonl");
    int64_t num_params = 0;
    for (auto& p : model_->parameters()) num_params += p.numel();
    spdlog::info("model {} ({:.2f}M parameters), data {} ({} images, {} steps/epoch), device {}{}",
                 config_.model.name, num_params / 1e6, config_.data.name, dataset_->size(),
                 loader_.sampler().steps_per_epoch(), device_.str(), bf16_ ? ", bf16 autocast" : "");
  }

  // Continues from `c`: weights, EMA, optimizer moments, RNG and the open logging window.
  void restore(const Checkpoint& c) {
    const std::string source = "checkpoint of step " + std::to_string(c.step);
    load_state_dict(*model_, c.model, source + " (model)");
    if (ema_) load_state_dict(ema_->shadow(), c.ema, source + " (ema)");
    load_adamw_state(optimizer_, trainable_, c.optimizer, source + " (optimizer)");
    // The checkpoint is read by every rank from the same file; nothing else to agree on.
    at::Generator cpu_generator = at::detail::getDefaultCPUGenerator();
    cpu_generator.set_state(c.trainer_state.at("rng.cpu"));
    window_.from_tensors(c.trainer_state);
    start_step_ = c.step;
    spdlog::info("resumed from step {} (epoch {})", c.step, loader_.sampler().epoch_of(c.step));
  }

  TrainSummary run() {
    TrainSummary summary;
    summary.run_dir = config_.run.dir;
    summary.start_step = summary.steps = start_step_;
    StopSignals signals;
    ProgressBar bar(tc_.steps, "train", start_step_, communicator_.is_main());
    const auto start = std::chrono::steady_clock::now();
    model_->train();
    for (int64_t step = start_step_; step < tc_.steps; ++step) {
      StepLosses losses = forward_backward(step, loader_.batch_for_step(step));
      update(step, losses);

      const int64_t done = summary.steps = step + 1;
      const bool log_boundary = done % tc_.log_every == 0, last = done == tc_.steps;
      const bool periodic = config_.checkpoint.every > 0 && done % config_.checkpoint.every == 0;
      if (log_boundary) log(done, bar, summary);
      if (periodic || last) save(done);
      // A run ending inside a logging window logs it after the checkpoint, which keeps the window
      // open: a resumed run then logs exactly what one long run would have.
      if (last && !log_boundary) log(done, bar, summary);
      if (stop_requested_ && !last) {
        if (!periodic) save(done);
        bar.finish();
        const int sig = StopSignals::requested();
        spdlog::warn("stopped by signal {} after step {}; to continue, run the same command with "
                     "--resume auto run.dir={}", sig, done, config_.run.dir);
        summary.stopped_by_signal = sig != 0 ? sig : SIGTERM;  // another rank's signal
        return summary;
      }
      bar.update(done, "loss " + std::to_string(summary.last_loss).substr(0, 6));
    }
    bar.finish();
    summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    spdlog::info("trained steps {}..{} in {}", start_step_ + 1, tc_.steps, format_duration(summary.seconds));
    if (communicator_.world_size() > 1 && tc_.steps > start_step_) {
      spdlog::info("gradient all-reduce ({}): {} buckets, {:.1f} MB per step in {}, overlap {}; "
                   "{:.1f} ms per step not hidden by backward", communicator_.backend(),
                   reducer_.num_buckets(), reducer_.bucket_bytes_on_wire() / 1e6,
                   tc_.grad_reduce_dtype, tc_.grad_reduce_overlap ? "on" : "off",
                   1e3 * reducer_.exposed_seconds() / static_cast<double>(tc_.steps - start_step_));
    }
    finish();
    return summary;
  }

 private:
  static NamedParameters trainable_parameters(Backbone& model) {
    NamedParameters out;
    for (auto& p : model.named_parameters()) {
      if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
    }
    return out;
  }
  // The official initialisation from the seed, then train.init_from where set (not when
  // resuming: the checkpoint replaces everything).
  static std::shared_ptr<Backbone> build_model(const ExperimentConfig& config, bool resuming) {
    torch::manual_seed(static_cast<uint64_t>(config.train.seed));
    auto model = build_backbone(config.model);
    const std::string& path = config.train.init_from;
    if (path.empty() || resuming) return model;
    auto weights = read_weights_file(path);
    auto kept = load_state_dict(*model, weights, "train.init_from " + path, /*allow_missing=*/true);
    std::string examples;
    for (size_t i = 0; i < kept.size() && i < 4; ++i) examples += (i ? ", " : "") + kept[i];
    spdlog::info("initialised from {}: {} tensors loaded; {} model tensors kept their "
                 "initialisation{}{}", path, weights.size(), kept.size(),
                 kept.empty() ? "" : " (", kept.empty() ? "" : examples + (kept.size() > 4 ? ", ...)" : ")"));
    return model;
  }

  // The shadow's own initialisation is overwritten by the copy, so it must not consume the
  // global generator (that would make rank 0's random stream differ from the others').
  static std::unique_ptr<Ema> make_ema(const Backbone& model, const ModelConfig& config) {
    at::Generator cpu_generator = at::detail::getDefaultCPUGenerator();
    const at::Tensor state = cpu_generator.get_state();
    auto ema = std::make_unique<Ema>(model, build_backbone(config));
    cpu_generator.set_state(state);
    return ema;
  }
  static std::vector<at::Tensor> tensors_of(const NamedParameters& named) {
    std::vector<at::Tensor> out;
    for (const auto& [name, p] : named) out.push_back(p);
    return out;
  }

  // Forward and backward over every micro-batch of this rank's shard of the global batch of
  // `step`, then the gradient sum over ranks. Each sample's timestep, noise, label drop and flip
  // come from its own (seed, step, global index) generator, so the split does not matter.
  StepLosses forward_backward(int64_t step, const Batch& batch) {
    optimizer_.zero_grad();
    const int64_t per_rank = tc_.global_batch_size / communicator_.world_size();
    const int64_t micro_batch = per_rank / tc_.grad_accum_steps;
    const std::vector<int64_t> image_shape = {dataset_->channels(), dataset_->image_size(),
                                              dataset_->image_size()};
    StepLosses sums{at::zeros({}, device_), at::zeros({}, device_), at::zeros({}, device_)};
    for (int64_t micro = 0; micro < tc_.grad_accum_steps; ++micro) {
      const int64_t first = micro * micro_batch;  // within this rank's shard
      const int64_t global_first = communicator_.rank() * per_rank + first;
      auto draws = draw_for_samples(static_cast<uint64_t>(tc_.seed), step, global_first, micro_batch,
                                    config_.diffusion.steps, image_shape,
                                    config_.model.class_dropout_prob, config_.data.random_flip);
      auto x0 = batch.images.narrow(0, first, micro_batch);
      x0 = at::where(draws.flip.view({-1, 1, 1, 1}), x0.flip({3}), x0).to(device_);
      auto y = at::where(draws.drop, at::full_like(draws.t, config_.model.num_classes),
                         batch.labels.narrow(0, first, micro_batch)).to(device_);
      auto t = draws.t.to(device_);
      auto noise = draws.noise.to(device_);

      GaussianDiffusion::Losses losses;
      at::Tensor aux_loss;
      std::map<std::string, at::Tensor> metrics;
      {
        compat::AutocastGuard autocast(device_.type(), at::kBFloat16, bf16_);
        auto x_t = diffusion_.q_sample(x0, t, noise);
        BackboneOutput out = model_->forward(x_t, diffusion_.model_timesteps(t), y);
        losses = diffusion_.losses_from_output(out.out, x0, x_t, t, noise);
        aux_loss = out.aux_loss;
        metrics = std::move(out.metrics);
      }
      // Sum over the micro-batch / global batch: the gradient equals that of the global mean.
      auto loss = losses.loss.sum() / static_cast<double>(tc_.global_batch_size);
      // The auxiliary loss is a mean per micro-batch; gradients are summed over micro-batches
      // and ranks, so its weight is one over their number.
      if (aux_loss.defined()) {
        loss = loss + aux_loss / static_cast<double>(tc_.grad_accum_steps * communicator_.world_size());
      }
      if (micro + 1 == tc_.grad_accum_steps) reducer_.expect_final_backward();
      loss.backward();
      sums.loss = sums.loss + losses.loss.detach().sum();
      sums.mse = sums.mse + losses.mse.detach().sum();
      sums.vb = sums.vb + losses.vb.detach().sum();
      const double share = 1.0 / static_cast<double>(tc_.grad_accum_steps * communicator_.world_size());
      if (aux_loss.defined()) metrics["aux_loss"] = aux_loss.detach() * share;
      for (auto& [name, value] : metrics) {
        auto& total = sums.extras[name];
        auto v = value.detach().to(device_, at::kDouble);
        total = total.defined() ? total + v : v;
      }
    }
    reducer_.reduce();
    // One small all-reduce carries the loss sums and whether any rank was asked to stop, so
    // every rank takes the same decisions (skip a step, stop) from the same numbers.
    // The extras ride along (every rank has the same names: the same backbone on every rank).
    std::vector<at::Tensor> pieces = {sums.loss.view({1}), sums.mse.view({1}), sums.vb.view({1}),
                                      at::full({1}, StopSignals::requested() != 0 ? 1.0 : 0.0,
                                               sums.loss.options())};
    for (const auto& [name, value] : sums.extras) pieces.push_back(value.to(sums.loss.scalar_type()).reshape({-1}));
    at::Tensor shared = at::cat(pieces);
    communicator_.all_reduce_sum(shared);
    StepLosses reduced{shared[0], shared[1], shared[2], {}};
    int64_t offset = 4;
    for (const auto& [name, value] : sums.extras) {
      reduced.extras[name] = shared.narrow(0, offset, value.numel()).view(value.sizes());
      offset += value.numel();
    }
    stop_requested_ = shared[3].item<double>() > 0;
    return reduced;
  }

  // Clip, then step the optimizer and the EMA, unless the loss or gradient is not finite (one
  // host sync per step); too many such steps in a row stop the run.
  void update(int64_t step, const StepLosses& losses) {
    auto grad_norm = clip_grad_norm(trainable_tensors_, tc_.grad_clip);
    if (!(at::isfinite(losses.loss) & at::isfinite(grad_norm)).item<bool>()) {
      optimizer_.zero_grad();
      spdlog::warn("step {}: non-finite loss or gradient; update skipped ({} in a row)", step + 1,
                   ++bad_steps_);
      if (bad_steps_ >= tc_.max_bad_steps) {
        throw Error("training stopped: " + std::to_string(bad_steps_) + " consecutive steps with a "
                    "non-finite loss or gradient (train.max_bad_steps). The last good checkpoint "
                    "is in " + config_.run.dir + "/checkpoints; lower train.lr or set train.grad_clip");
      }
      return;
    }
    bad_steps_ = 0;
    optimizer_.step();
    if (ema_) ema_->update(*model_, Ema::decay_at(step, tc_.ema_decay, tc_.ema_warmup));
    window_.add(losses.loss, losses.mse, losses.vb, grad_norm, tc_.global_batch_size, losses.extras);
  }

  void log(int64_t done, ProgressBar& bar, TrainSummary& summary) {
    if (window_.empty()) return;
    auto record = window_.record(done, loader_.sampler().epoch_of(done - 1), tc_.lr);
    window_ = LogWindow();
    if (!communicator_.is_main()) return;  // the sums agree on every rank; rank 0 reports them
    // Achieved model FLOP/s: 6 x forward MACs per image (forward + backward, 2 FLOPs per MAC)
    // at the window's images/s, over all ranks; MFU against train.peak_tflops (all devices).
    const double tflops = 6.0 * static_cast<double>(model_->forward_macs()) * record[8].second / 1e12;
    record.emplace_back("tflops", tflops);
    if (tc_.peak_tflops > 0) {
      record.emplace_back("mfu", tflops / (tc_.peak_tflops * communicator_.world_size()));
    }
    metrics_->write(record);
    const double loss = record[2].second;
    if (summary.first_loss == 0.0) summary.first_loss = loss;
    summary.last_loss = loss;
    bar.clear();
    std::string aux;
    for (const auto& [name, value] : record) {
      if (name == "aux_loss") aux = fmt::format("  aux_loss {:.4f}", value);
    }
    spdlog::info("step {}/{}  loss {:.4f}{}  grad_norm {:.3f}  {:.2f} steps/s  {:.0f} img/s", done,
                 tc_.steps, loss, aux, record[5].second, record[7].second, record[8].second);
  }

  // Rank 0 writes the checkpoint; the other ranks hold the same state.
  void save(int64_t step) {
    if (!communicator_.is_main()) return;
    Checkpoint c;
    c.step = step;
    c.model = state_dict(*model_);
    c.ema = state_dict(ema_->shadow());
    c.optimizer = adamw_state_tensors(optimizer_, trainable_);
    c.trainer_state = window_.to_tensors();
    c.trainer_state["rng.cpu"] = at::detail::getDefaultCPUGenerator().get_state();
    const auto& sampler = loader_.sampler();
    c.trainer_metadata = {{"step", std::to_string(step)},
                          {"epoch", std::to_string(sampler.epoch_of(step))},
                          {"position_in_epoch", std::to_string(step % sampler.steps_per_epoch())},
                          {"seed", std::to_string(tc_.seed)},
                          {"world_size", std::to_string(communicator_.world_size())},
                          {"libtorch_version", compat::torch_version()}};
    c.config_yaml = to_yaml(config_);
    spdlog::info("checkpoint {}", save_checkpoint(config_.run.dir, c, config_.checkpoint.keep,
                                                  config_.checkpoint.keep_every));
  }

  // The final weights (also in the last checkpoint) for `dit sample`, and the sample grid.
  void finish() {
    if (!communicator_.is_main()) return;
    const auto metadata = weights_metadata(to_yaml(config_), tc_.steps);
    save_weights(*model_, config_.run.dir + "/model.safetensors", metadata);
    save_weights(ema_->shadow(), config_.run.dir + "/ema.safetensors", metadata);
    spdlog::info("saved model.safetensors and ema.safetensors");
    if (!config_.sample.at_end) return;
    auto labels = grid_labels(config_.model.num_classes, config_.sample.num_per_class);
    auto samples = generate_samples(ema_->shadow(), config_.diffusion, config_.sample, labels, device_);
#ifdef DITLAB_WITH_OPENCV
    const std::string path = config_.run.dir + "/samples.png";
#else
    const std::string path = config_.run.dir + "/samples.safetensors";
#endif
    write_samples(path, samples, labels, config_.sample.num_per_class);
    spdlog::info("wrote {} (EMA weights, {} sampler, {} steps, guidance {})", path,
                 config_.sample.sampler, config_.sample.steps, config_.sample.cfg_scale);
  }

  const ExperimentConfig config_;
  const TrainConfig& tc_;
  const c10::Device device_;
  const bool bf16_;
  std::shared_ptr<Dataset> dataset_;
  std::shared_ptr<Backbone> model_;
  std::unique_ptr<Ema> ema_;  // rank 0 only: it alone saves and samples
  const NamedParameters trainable_;  // listed once: the step uses them every time
  const std::vector<at::Tensor> trainable_tensors_;
  torch::optim::AdamW optimizer_;
  GaussianDiffusion diffusion_;
  PrefetchLoader loader_;
  Communicator& communicator_;
  GradReducer reducer_;
  std::unique_ptr<JsonlSink> metrics_;  // rank 0 only
  LogWindow window_;
  bool stop_requested_ = false;
  int64_t start_step_ = 0;
  int64_t bad_steps_ = 0;
};

}  // namespace

TrainSummary train(const ExperimentConfig& input_config, const TrainOptions& options) {
  // Complete the config from the device and the data before anything touches the disk.
  ExperimentConfig config = input_config;
  config.run.dir = expand_run_dir(config.run.dir);
  if (config.train.threads > 0) at::set_num_threads(static_cast<int>(config.train.threads));
  const DistEnv dist_env = detect_dist_env();
  c10::Device device = select_device(config.train.device);
  // One GPU per rank: "cuda" means the one of this rank's local index.
  if (device.is_cuda() && !device.has_index()) device = c10::Device(c10::kCUDA, dist_env.local_rank);
  Communicator communicator(dist_env, config.train.dist_backend,
                            std::chrono::seconds(config.train.dist_timeout_s), device.is_cuda());
  if (config.train.grad_reduce_dtype == "bf16" && !communicator.can_sum(at::kBFloat16)) {
    throw ConfigError("train.grad_reduce_dtype bf16: the " + communicator.backend() + " backend of "
                      "this LibTorch (" + compat::torch_version() + ") cannot sum bf16 tensors; "
                      "use fp32 (bf16 is for nccl on GPUs)");
  }
  const int64_t ranks_times_accum = communicator.world_size() * config.train.grad_accum_steps;
  if (config.train.global_batch_size % ranks_times_accum != 0) {
    throw ConfigError("train.global_batch_size " + std::to_string(config.train.global_batch_size) +
                      " is not divisible by " + std::to_string(communicator.world_size()) +
                      " ranks x train.grad_accum_steps " +
                      std::to_string(config.train.grad_accum_steps));
  }
  auto dataset = make_dataset(config.data);
  config.model = resolve_model_config(model_config_for_data(config.model, *dataset));
  if (config.sample.at_end) check_sample_config(config.model, config.diffusion, config.sample);

  std::optional<Checkpoint> resume_from = find_resume_checkpoint(config, options);
  if (communicator.is_main()) {
    prepare_run_directory(config, options, resume_from);
    log::add_file_sink(config.run.dir + "/train.log");
    write_run_metadata(config.run.dir, config, options.command_line, device);
    if (communicator.world_size() > 1) {
      spdlog::info("{} ranks ({}), rendezvous at {}:{}", communicator.world_size(),
                   communicator.env().launcher, communicator.env().master_addr,
                   communicator.env().master_port);
    }
  } else {
    spdlog::set_level(spdlog::level::warn);  // rank 0 reports; the others only warn and fail
  }
  communicator.barrier();  // the run directory is ready before any rank goes on

  Trainer trainer(config, dataset, device, communicator, resume_from.has_value());
  if (resume_from) trainer.restore(*resume_from);
  resume_from.reset();  // free the host copy of the checkpoint
  TrainSummary summary = trainer.run();
  spdlog::default_logger()->flush();  // train.log is complete when train() returns
  return summary;
}

}  // namespace ditlab
