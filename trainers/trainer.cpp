#include "trainers/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "data/prefetch_loader.h"
#include "models/registry.h"
#include "src/common/compat.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/progress.h"
#include "src/config/config_loader.h"
#include "src/diffusion/gaussian_diffusion.h"
#include "src/diffusion/noise_schedule.h"
#include "src/io/atomic_file.h"
#include "src/io/module_weights.h"
#include "trainers/checkpoint.h"
#include "trainers/ema.h"
#include "trainers/experiment.h"
#include "trainers/grad_norm.h"
#include "trainers/metrics_sink.h"
#include "trainers/optimizer_state.h"
#include "trainers/resume.h"
#include "trainers/sample_draws.h"
#include "trainers/sampling.h"
#include "trainers/stop_signal.h"

namespace ditlab {
namespace fs = std::filesystem;

namespace {

// Sums of the logged quantities over one logging window, kept on the device and read once per
// window (one host sync per log line). Saved in checkpoints so that logged means stay exact
// across a resume in the middle of a window.
struct Window {
  at::Tensor loss_sum = at::zeros({}, at::kDouble), mse_sum = at::zeros({}, at::kDouble),
             vb_sum = at::zeros({}, at::kDouble), grad_norm_sum = at::zeros({}, at::kDouble);
  int64_t steps = 0, images = 0;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();

  void add(const at::Tensor& loss, const at::Tensor& mse, const at::Tensor& vb,
           const at::Tensor& grad_norm, int64_t batch) {
    loss_sum = loss_sum.to(loss.device()) + loss.to(at::kDouble);
    mse_sum = mse_sum.to(loss.device()) + mse.to(at::kDouble);
    vb_sum = vb_sum.to(loss.device()) + vb.to(at::kDouble);
    grad_norm_sum = grad_norm_sum.to(loss.device()) + grad_norm.to(at::kDouble);
    steps += 1;
    images += batch;
  }
  std::map<std::string, at::Tensor> to_tensors() const {
    auto cpu = [](const at::Tensor& t) { return t.to(at::kCPU); };
    return {{"window.loss_sum", cpu(loss_sum)},         {"window.mse_sum", cpu(mse_sum)},
            {"window.vb_sum", cpu(vb_sum)},             {"window.grad_norm_sum", cpu(grad_norm_sum)},
            {"window.steps", at::tensor(steps, at::kLong)}, {"window.images", at::tensor(images, at::kLong)}};
  }
  void from_tensors(const std::map<std::string, at::Tensor>& t) {
    loss_sum = t.at("window.loss_sum");
    mse_sum = t.at("window.mse_sum");
    vb_sum = t.at("window.vb_sum");
    grad_norm_sum = t.at("window.grad_norm_sum");
    steps = t.at("window.steps").item<int64_t>();
    images = t.at("window.images").item<int64_t>();
  }
};

// Refuses to write over another run's results (continuing one is --resume).
void prepare_fresh_run_dir(const std::string& dir, bool allow_leftovers) {
  for (const char* file : {"metrics.jsonl", "model.safetensors", "ema.safetensors", "checkpoints"}) {
    if (fs::exists(fs::path(dir) / file)) {
      if (allow_leftovers) {
        fs::remove_all(fs::path(dir) / file);  // --resume auto found nothing usable: start over
        continue;
      }
      throw ConfigError("run directory '" + dir + "' already holds a run (" + file +
                        "); continue it with --resume auto, choose another run.dir (e.g. "
                        "run.dir=runs/{time}) or remove it");
    }
  }
  fs::create_directories(dir);
}

// Drops the metrics records that the resumed run will log again: those after `step`, and the
// record of a partial window that a run ending at `step` logged.
void truncate_metrics(const std::string& path, int64_t step, int64_t log_every) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    // A line cut short by a kill (no closing brace) is dropped with the others.
    auto at = line.find("\"step\": ");
    if (at == std::string::npos || line.empty() || line.back() != '}') continue;
    int64_t s = std::strtoll(line.c_str() + at + 8, nullptr, 10);
    if (s < step || (s == step && step % log_every == 0)) kept += line + "\n";
  }
  write_file_atomically(path, kept);
}

// Weights files carry the resolved config, so `dit sample --weights` needs nothing else.
std::map<std::string, std::string> weights_metadata(const ExperimentConfig& config, int64_t step) {
  return {{"format", "ditlab"}, {"config", to_yaml(config)}, {"step", std::to_string(step)}};
}

NamedParameters named_trainable(Backbone& model) {
  NamedParameters out;
  for (auto& p : model.named_parameters()) {
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  }
  return out;
}

}  // namespace

TrainSummary train(const ExperimentConfig& input_config, const TrainOptions& options) {
  // ---- Configuration: complete it from the data and the device.
  ExperimentConfig config = input_config;
  const auto& tc = config.train;
  config.run.dir = expand_run_dir(config.run.dir);
  if (tc.threads > 0) at::set_num_threads(static_cast<int>(tc.threads));
  const c10::Device device = select_device(tc.device);
  if (tc.global_batch_size % tc.grad_accum_steps != 0) {
    throw ConfigError("train.global_batch_size " + std::to_string(tc.global_batch_size) +
                      " is not divisible by train.grad_accum_steps " +
                      std::to_string(tc.grad_accum_steps));
  }
  const bool bf16 = tc.precision == "bf16" || (tc.precision == "auto" && compat::bf16_supported(device));
  auto dataset = make_dataset(config.data);
  config.model = resolve_model_config(model_config_for_data(config.model, *dataset));
  if (config.sample.at_end) check_sample_config(config.model, config.diffusion, config.sample);

  // ---- The checkpoint to continue from, if any.
  std::optional<Checkpoint> resume_from;
  if (options.resume == "auto") {
    resume_from = load_latest_complete(config.run.dir, [](const std::string& dir, const std::string& why) {
      spdlog::warn("skipping checkpoint {}: {}", dir, why);
    });
    if (!resume_from && !list_checkpoints(config.run.dir).empty()) {
      throw IoError("no checkpoint in " + config.run.dir + "/checkpoints verifies (see the warnings "
                    "above); nothing was changed. Remove the run directory to start over");
    }
  } else if (!options.resume.empty()) {
    resume_from = load_checkpoint(options.resume);
    std::error_code ec;  // `own`: the checkpoint belongs to run.dir itself
    const bool own = fs::equivalent(fs::weakly_canonical(options.resume).parent_path().parent_path(),
                                    config.run.dir, ec);
    if (!own && (fs::exists(config.run.dir + "/metrics.jsonl") || !list_checkpoints(config.run.dir).empty())) {
      throw ConfigError("run directory '" + config.run.dir + "' holds another run; resume " +
                        options.resume + " into a new run.dir");
    }
  }
  if (resume_from) {
    ExperimentConfig saved;
    apply_yaml_text(saved, resume_from->config_yaml, "checkpoint config.yaml");
    for (const auto& key : check_resume_config(saved, config, options.allow_config_change)) {
      spdlog::warn("resuming with a changed {} (allowed by --allow-config-change)", key);
    }
    if (resume_from->step >= tc.steps) {
      throw ConfigError("the checkpoint is at step " + std::to_string(resume_from->step) +
                        ", train.steps is " + std::to_string(tc.steps) +
                        "; raise train.steps to train longer");
    }
    fs::create_directories(config.run.dir);
    set_aside_checkpoints_after(config.run.dir, resume_from->step);
    truncate_metrics(config.run.dir + "/metrics.jsonl", resume_from->step, saved.train.log_every);
  } else {
    if (options.resume == "auto") spdlog::info("no complete checkpoint in {}: starting fresh", config.run.dir);
    prepare_fresh_run_dir(config.run.dir, options.resume == "auto");
  }
  log::add_file_sink(config.run.dir + "/train.log");
  write_run_metadata(config.run.dir, config, options.command_line, device);

  // ---- Components.
  torch::manual_seed(static_cast<uint64_t>(tc.seed));  // the model's initialisation
  auto model = build_backbone(config.model);
  model->to(device);
  Ema ema(*model, build_backbone(config.model));
  ema.shadow().to(device);
  const NamedParameters trainable = named_trainable(*model);
  std::vector<at::Tensor> trainable_tensors;
  for (const auto& [name, p] : trainable) trainable_tensors.push_back(p);
  torch::optim::AdamW optimizer(trainable_tensors, torch::optim::AdamWOptions(tc.lr)
                                                       .betas({tc.adam_beta1, tc.adam_beta2})
                                                       .eps(tc.adam_eps)
                                                       .weight_decay(tc.weight_decay));
  const auto& dc = config.diffusion;
  GaussianDiffusion diffusion(make_betas(dc.schedule, dc.steps, dc.beta_start, dc.beta_end),
                              config.model.learn_sigma);
  PrefetchLoader loader(dataset, EpochSampler(dataset->size(), tc.global_batch_size,
                                              static_cast<uint64_t>(tc.seed)),
                        config.data.prefetch);
  Window window;
  int64_t start_step = 0;
  if (resume_from) {
    const std::string source = "checkpoint of step " + std::to_string(resume_from->step);
    load_state_dict(*model, resume_from->model, source + " (model)");
    load_state_dict(ema.shadow(), resume_from->ema, source + " (ema)");
    load_adamw_state(optimizer, trainable, resume_from->optimizer, source + " (optimizer)");
    at::Generator cpu_generator = at::detail::getDefaultCPUGenerator();
    cpu_generator.set_state(resume_from->trainer_state.at("rng.cpu"));
    window.from_tensors(resume_from->trainer_state);
    start_step = resume_from->step;
    spdlog::info("resumed from step {} (epoch {})", start_step, loader.sampler().epoch_of(start_step));
    resume_from.reset();  // free the host copies
  }
  int64_t num_params = 0;
  for (auto& p : model->parameters()) num_params += p.numel();
  spdlog::info("model {} ({:.2f}M parameters), data {} ({} images, {} steps/epoch), device {}{}",
               config.model.name, num_params / 1e6, config.data.name, dataset->size(),
               loader.sampler().steps_per_epoch(), device.str(), bf16 ? ", bf16 autocast" : "");

  auto save = [&](int64_t step) {
    Checkpoint c;
    c.step = step;
    c.model = state_dict(*model);
    c.ema = state_dict(ema.shadow());
    c.optimizer = adamw_state_tensors(optimizer, trainable);
    c.trainer_state = window.to_tensors();
    c.trainer_state["rng.cpu"] = at::detail::getDefaultCPUGenerator().get_state();
    c.trainer_metadata = {{"step", std::to_string(step)},
                          {"epoch", std::to_string(loader.sampler().epoch_of(step))},
                          {"position_in_epoch", std::to_string(step % loader.sampler().steps_per_epoch())},
                          {"seed", std::to_string(tc.seed)},
                          {"world_size", "1"},
                          {"libtorch_version", compat::torch_version()}};
    c.config_yaml = to_yaml(config);
    auto dir = save_checkpoint(config.run.dir, c, config.checkpoint.keep, config.checkpoint.keep_every);
    spdlog::info("checkpoint {}", dir);
  };

  // ---- The loop.
  JsonlSink metrics(config.run.dir + "/metrics.jsonl");
  const int64_t micro_batch = tc.global_batch_size / tc.grad_accum_steps;
  const int64_t null_class = config.model.num_classes;
  const std::vector<int64_t> image_shape = {dataset->channels(), dataset->image_size(),
                                            dataset->image_size()};
  TrainSummary summary;
  summary.run_dir = config.run.dir;
  summary.start_step = summary.steps = start_step;
  int64_t bad_steps = 0;
  StopSignals signals;
  ProgressBar bar(tc.steps, "train", start_step);
  const auto start = std::chrono::steady_clock::now();
  model->train();

  for (int64_t step = start_step; step < tc.steps; ++step) {
    Batch batch = loader.batch_for_step(step);
    optimizer.zero_grad();
    at::Tensor loss_sum = at::zeros({}, device), mse_sum = loss_sum, vb_sum = loss_sum;
    for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
      const int64_t first = micro * micro_batch;
      auto draws = draw_for_samples(static_cast<uint64_t>(tc.seed), step, first, micro_batch,
                                    dc.steps, image_shape, config.model.class_dropout_prob,
                                    config.data.random_flip);
      auto x0 = batch.images.narrow(0, first, micro_batch);
      x0 = at::where(draws.flip.view({-1, 1, 1, 1}), x0.flip({3}), x0).to(device);
      auto y = at::where(draws.drop, at::full_like(draws.t, null_class),
                         batch.labels.narrow(0, first, micro_batch)).to(device);
      auto t = draws.t.to(device);
      auto noise = draws.noise.to(device);

      at::Tensor aux_loss;
      GaussianDiffusion::Losses losses;
      {
        compat::AutocastGuard autocast(device.type(), at::kBFloat16, bf16);
        auto x_t = diffusion.q_sample(x0, t, noise);
        BackboneOutput out = model->forward(x_t, diffusion.model_timesteps(t), y);
        losses = diffusion.losses_from_output(out.out, x0, x_t, t, noise);
        aux_loss = out.aux_loss;
      }
      // Sum over the micro-batch / global batch: the gradient equals that of the global mean.
      auto loss = losses.loss.sum() / static_cast<double>(tc.global_batch_size);
      if (aux_loss.defined()) loss = loss + aux_loss / static_cast<double>(tc.grad_accum_steps);
      loss.backward();
      loss_sum = loss_sum + losses.loss.detach().sum();
      mse_sum = mse_sum + losses.mse.detach().sum();
      vb_sum = vb_sum + losses.vb.detach().sum();
    }
    auto grad_norm = clip_grad_norm(trainable_tensors, tc.grad_clip);
    // A non-finite loss or gradient skips the update (one host sync per step).
    if (!(at::isfinite(loss_sum) & at::isfinite(grad_norm)).item<bool>()) {
      optimizer.zero_grad();
      spdlog::warn("step {}: non-finite loss or gradient; update skipped ({} in a row)", step + 1,
                   ++bad_steps);
      if (bad_steps >= tc.max_bad_steps) {
        throw Error("training stopped: " + std::to_string(bad_steps) + " consecutive steps with a "
                    "non-finite loss or gradient (train.max_bad_steps). The last good checkpoint "
                    "is in " + config.run.dir + "/checkpoints; lower train.lr or set train.grad_clip");
      }
    } else {
      bad_steps = 0;
      optimizer.step();
      ema.update(*model, Ema::decay_at(step, tc.ema_decay, tc.ema_warmup));
      window.add(loss_sum, mse_sum, vb_sum, grad_norm, tc.global_batch_size);
    }

    const int64_t done = step + 1;
    summary.steps = done;
    const bool log_boundary = done % tc.log_every == 0;
    const bool last = done == tc.steps;
    const bool periodic = config.checkpoint.every > 0 && done % config.checkpoint.every == 0;
    auto log_window = [&] {
      if (window.steps == 0) return;
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - window.start).count();
      const double images = static_cast<double>(window.images);
      const double loss = window.loss_sum.item<double>() / images;
      std::vector<std::pair<std::string, double>> record = {
          {"step", static_cast<double>(done)},
          {"epoch", static_cast<double>(loader.sampler().epoch_of(step))},
          {"loss", loss},
          {"mse", window.mse_sum.item<double>() / images},
          {"vb", window.vb_sum.item<double>() / images},
          {"grad_norm", window.grad_norm_sum.item<double>() / static_cast<double>(window.steps)},
          {"lr", tc.lr},
          {"steps_per_sec", window.steps / seconds},
          {"images_per_sec", images / seconds},
      };
      metrics.write(record);
      if (summary.first_loss == 0.0) summary.first_loss = loss;
      summary.last_loss = loss;
      double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      bar.clear();
      spdlog::info("step {}/{}  loss {:.4f}  grad_norm {:.3f}  {:.2f} steps/s  {:.0f} img/s  "
                   "elapsed {}",
                   done, tc.steps, loss, record[5].second, record[7].second, record[8].second,
                   format_duration(elapsed));
      window = Window();
    };
    if (log_boundary) log_window();
    if (periodic || last) save(done);
    // A run ending inside a logging window logs it after the checkpoint, which keeps the window
    // open: a resumed run then logs exactly what one long run would have.
    if (last && !log_boundary) log_window();
    if (int sig = StopSignals::requested(); sig != 0 && done < tc.steps) {
      if (!periodic) save(done);
      bar.finish();
      spdlog::warn("stopped by signal {} after step {}; to continue, run the same command with "
                   "--resume auto run.dir={}", sig, done, config.run.dir);
      summary.stopped_by_signal = sig;
      return summary;
    }
    bar.update(done, "loss " + std::to_string(summary.last_loss).substr(0, 6));
  }
  bar.finish();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("trained steps {}..{} in {}", start_step + 1, tc.steps, format_duration(summary.seconds));

  // ---- The final weights (also in the last checkpoint) and samples.
  save_weights(*model, config.run.dir + "/model.safetensors", weights_metadata(config, tc.steps));
  save_weights(ema.shadow(), config.run.dir + "/ema.safetensors", weights_metadata(config, tc.steps));
  spdlog::info("saved model.safetensors and ema.safetensors");
  if (config.sample.at_end) {
    auto labels = grid_labels(config.model.num_classes, config.sample.num_per_class);
    auto samples = generate_samples(ema.shadow(), config.diffusion, config.sample, labels, device);
#ifdef DITLAB_WITH_OPENCV
    const std::string path = config.run.dir + "/samples.png";
#else
    const std::string path = config.run.dir + "/samples.safetensors";
#endif
    write_samples(path, samples, labels, config.sample.num_per_class);
    spdlog::info("wrote {} (EMA weights, {} sampler, {} steps, guidance {})", path,
                 config.sample.sampler, config.sample.steps, config.sample.cfg_scale);
  }
  return summary;
}

}  // namespace ditlab
