#include "trainers/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <filesystem>

#include "data/prefetch_loader.h"
#include "models/registry.h"
#include "src/common/compat.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/progress.h"
#include "src/config/config_loader.h"
#include "src/diffusion/gaussian_diffusion.h"
#include "src/diffusion/noise_schedule.h"
#include "src/io/module_weights.h"
#include "trainers/ema.h"
#include "trainers/experiment.h"
#include "trainers/grad_norm.h"
#include "trainers/metrics_sink.h"
#include "trainers/sample_draws.h"
#include "trainers/sampling.h"

namespace ditlab {
namespace fs = std::filesystem;

namespace {

// Refuses to write over another run's results (resuming is a separate, explicit operation).
void prepare_run_dir(const std::string& dir) {
  for (const char* file : {"metrics.jsonl", "model.safetensors", "ema.safetensors"}) {
    if (fs::exists(fs::path(dir) / file)) {
      throw ConfigError("run directory '" + dir + "' already holds a run (" + file +
                        "); choose another run.dir (e.g. run.dir=runs/{time}) or remove it");
    }
  }
  fs::create_directories(dir);
}

// Weights files carry the resolved config, so `dit sample --weights` needs nothing else.
std::map<std::string, std::string> weights_metadata(const ExperimentConfig& config, int64_t step) {
  return {{"format", "ditlab"}, {"config", to_yaml(config)}, {"step", std::to_string(step)}};
}

// Every checkpoint.every steps: the weights so far, in checkpoints/step-NNNNNNNN/. (Optimizer and
// RNG state for exact resume are not written yet.)
void save_step_weights(const ExperimentConfig& config, const Backbone& model, const Backbone& ema,
                       int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08ld", static_cast<long>(step));
  const std::string dir = config.run.dir + "/checkpoints/" + name;
  fs::create_directories(dir);
  save_weights(model, dir + "/model.safetensors", weights_metadata(config, step));
  save_weights(ema, dir + "/ema.safetensors", weights_metadata(config, step));
  spdlog::info("saved weights of step {} in {}", step, dir);
}

// Running means of the logged quantities over one logging window.
struct Window {
  at::Tensor loss_sum, mse_sum, vb_sum, grad_norm_sum;  // on the device; read once per window
  int64_t steps = 0, images = 0;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
};

}  // namespace

TrainSummary train(const ExperimentConfig& input_config, const std::string& command_line) {
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

  // Data first: it completes the model config (image size, channels, classes).
  auto dataset = make_dataset(config.data);
  config.model = resolve_model_config(model_config_for_data(config.model, *dataset));

  if (config.sample.at_end) check_sample_config(config.model, config.diffusion, config.sample);
  prepare_run_dir(config.run.dir);
  log::add_file_sink(config.run.dir + "/train.log");
  write_run_metadata(config.run.dir, config, command_line, device);
  spdlog::info("run directory {}", config.run.dir);

  torch::manual_seed(static_cast<uint64_t>(tc.seed));  // the model's initialisation
  auto model = build_backbone(config.model);
  model->to(device);
  Ema ema(*model, build_backbone(config.model));
  ema.shadow().to(device);

  std::vector<at::Tensor> trainable;
  int64_t num_params = 0;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
    num_params += p.numel();
  }
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(tc.lr)
                                               .betas({tc.adam_beta1, tc.adam_beta2})
                                               .eps(tc.adam_eps)
                                               .weight_decay(tc.weight_decay));
  const auto& dc = config.diffusion;
  GaussianDiffusion diffusion(make_betas(dc.schedule, dc.steps, dc.beta_start, dc.beta_end),
                              config.model.learn_sigma);
  PrefetchLoader loader(dataset, EpochSampler(dataset->size(), tc.global_batch_size,
                                              static_cast<uint64_t>(tc.seed)),
                        config.data.prefetch);
  spdlog::info("model {} ({:.2f}M parameters), data {} ({} images, {} steps/epoch), device {}{}",
               config.model.name, num_params / 1e6, config.data.name, dataset->size(),
               loader.sampler().steps_per_epoch(), device.str(), bf16 ? ", bf16 autocast" : "");

  JsonlSink metrics(config.run.dir + "/metrics.jsonl");
  const int64_t micro_batch = tc.global_batch_size / tc.grad_accum_steps;
  const int64_t null_class = config.model.num_classes;
  const std::vector<int64_t> image_shape = {dataset->channels(), dataset->image_size(),
                                            dataset->image_size()};
  TrainSummary summary;
  summary.run_dir = config.run.dir;
  Window window;
  ProgressBar bar(tc.steps, "train");
  const auto start = std::chrono::steady_clock::now();
  model->train();

  for (int64_t step = 0; step < tc.steps; ++step) {
    Batch batch = loader.batch_for_step(step);
    optimizer.zero_grad();
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
      auto detached_sum = losses.loss.detach().sum();
      window.loss_sum = window.loss_sum.defined() ? window.loss_sum + detached_sum : detached_sum;
      auto mse = losses.mse.detach().sum(), vb = losses.vb.detach().sum();
      window.mse_sum = window.mse_sum.defined() ? window.mse_sum + mse : mse;
      window.vb_sum = window.vb_sum.defined() ? window.vb_sum + vb : vb;
    }
    auto grad_norm = clip_grad_norm(trainable, tc.grad_clip);
    window.grad_norm_sum = window.grad_norm_sum.defined() ? window.grad_norm_sum + grad_norm : grad_norm;
    optimizer.step();
    ema.update(*model, Ema::decay_at(step, tc.ema_decay, tc.ema_warmup));
    window.steps += 1;
    window.images += tc.global_batch_size;

    const int64_t done = step + 1;
    if (done % tc.log_every == 0 || done == tc.steps) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - window.start).count();
      const double images = static_cast<double>(window.images);
      const double loss = window.loss_sum.item<double>() / images;
      if (!std::isfinite(loss)) {
        throw Error("training diverged at step " + std::to_string(done) + " (loss " +
                    std::to_string(loss) + "); lower train.lr or set train.grad_clip");
      }
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
      if (summary.steps == 0) summary.first_loss = loss;
      summary.last_loss = loss;
      summary.steps = done;
      double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      bar.clear();
      spdlog::info("step {}/{}  loss {:.4f}  grad_norm {:.3f}  {:.2f} steps/s  {:.0f} img/s  "
                   "elapsed {}",
                   done, tc.steps, loss, record[5].second, record[7].second, record[8].second,
                   format_duration(elapsed));
      window = Window();
    }
    if (config.checkpoint.every > 0 && done % config.checkpoint.every == 0 && done < tc.steps) {
      save_step_weights(config, *model, ema.shadow(), done);
    }
    bar.update(done, "loss " + std::to_string(summary.last_loss).substr(0, 6));
  }
  bar.finish();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("trained {} steps in {}", tc.steps, format_duration(summary.seconds));

  save_weights(*model, config.run.dir + "/model.safetensors", weights_metadata(config, tc.steps));
  save_weights(ema.shadow(), config.run.dir + "/ema.safetensors", weights_metadata(config, tc.steps));
  spdlog::info("saved model.safetensors and ema.safetensors");

  if (config.sample.at_end) {
    auto labels = grid_labels(config.model.num_classes, config.sample.num_per_class);
    auto samples = generate_samples(ema.shadow(), config.diffusion, config.sample, labels, device);
    std::string path = config.run.dir + "/samples.png";
#ifndef DITLAB_WITH_OPENCV
    path = config.run.dir + "/samples.safetensors";
#endif
    write_samples(path, samples, labels, config.sample.num_per_class);
    spdlog::info("wrote {} (EMA weights, {} sampler, {} steps, guidance {})", path,
                 config.sample.sampler, config.sample.steps, config.sample.cfg_scale);
  }
  return summary;
}

}  // namespace ditlab
