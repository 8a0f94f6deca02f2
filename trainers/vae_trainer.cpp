#include "trainers/vae_trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adam.h>

#include <chrono>
#include <cmath>
#include <filesystem>

#include "data/dataset.h"
#include "data/held_out_split.h"
#include "models/vae/autoencoder_kl.h"
#include "models/vae/vae_weights.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/progress.h"
#include "src/io/directory_lock.h"
#include "src/io/image_grid.h"
#include "trainers/experiment.h"
#include "trainers/step_means.h"

namespace ditlab {
namespace {

AutoencoderKLOptions options_for(const AutoencoderConfig& c, int64_t channels) {
  AutoencoderKLOptions o;
  o.in_channels = o.out_channels = channels;
  o.block_out_channels = c.block_out_channels;
  o.layers_per_block = c.layers_per_block;
  o.latent_channels = c.latent_channels;
  o.norm_num_groups = c.norm_num_groups;
  return o;
}

}  // namespace

double psnr_db(double mse) { return 10.0 * std::log10(1.0 / std::max(mse, 1e-12)); }

double psnr_db(const at::Tensor& originals, const at::Tensor& reconstructions) {
  return psnr_db(((originals - reconstructions.clamp(-1, 1)) / 2).pow(2).mean().item<double>());
}

VaeTrainSummary train_vae(const ExperimentConfig& config, const std::string& command_line) {
  const auto& ac = config.autoencoder;
  const auto& tc = ac.train;
  const auto start = std::chrono::steady_clock::now();
  apply_compute_settings(config.train);
  auto data = make_dataset(config.data);
  if (data->latent_cache() != nullptr) {
    throw ConfigError("dit train-vae trains on images, but data.name is latents (" + config.data.path + ")");
  }
  const int64_t held_out = tc.eval_images, trainable = data->size() - held_out;
  if (trainable < tc.batch_size) {
    throw ConfigError("autoencoder.train.eval_images " + std::to_string(held_out) + " leaves " +
                      std::to_string(trainable) + " of the dataset's " + std::to_string(data->size()) +
                      " images for training, fewer than autoencoder.train.batch_size " +
                      std::to_string(tc.batch_size));
  }
  // Held out: an even stride over the dataset (the last images of a class-sorted folder would
  // be classes the autoencoder never saw, and the scaling factor would come from them alone).
  const HeldOutSplit split = even_held_out_split(data->size(), held_out);
  const AutoencoderKLOptions options = options_for(ac, data->channels());
  if (data->image_size() % options.downsampling() != 0) {
    throw ConfigError("data.image_size " + std::to_string(data->image_size()) + " is not a multiple of the "
                      "autoencoder's downsampling " + std::to_string(options.downsampling()) +
                      " (2^(levels of autoencoder.block_out_channels - 1))");
  }
  const std::string run_dir = expand_run_dir(config.run.dir);
  const std::string weights_path = run_dir + "/autoencoder.safetensors";
  const DirectoryLock run_dir_lock(run_dir, "dit train-vae");  // held until training ends
  if (std::filesystem::exists(weights_path)) {
    throw ConfigError("run.dir " + run_dir + " already holds an autoencoder; choose another run.dir");
  }
  std::filesystem::create_directories(run_dir);
  log::add_file_sink(run_dir + "/train.log");
  const c10::Device device = select_device(config.train.device);
  write_run_metadata(run_dir, config, command_line, device);

  torch::manual_seed(static_cast<uint64_t>(config.train.seed));
  AutoencoderKL vae(options);
  vae->to(device);
  int64_t parameters = 0;
  for (const auto& p : vae->parameters()) parameters += p.numel();
  spdlog::info("autoencoder: levels {}, latent {}x{}x{} per {}x{}x{} image, {:.2f}M parameters; {} training "
               "and {} held-out images; {} steps of {}", options.block_out_channels.size(),
               options.latent_channels, data->image_size() / options.downsampling(),
               data->image_size() / options.downsampling(), data->channels(), data->image_size(),
               data->image_size(), parameters / 1e6, trainable, held_out, tc.steps, tc.batch_size);
  torch::optim::Adam optimizer(vae->parameters(), torch::optim::AdamOptions(tc.lr));
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(config.train.seed));
  const bool l1 = tc.loss == "l1";
  StepMeans window(config.train.log_every, tc.steps);

  VaeTrainSummary summary;
  summary.weights_path = weights_path;
  ProgressBar bar(tc.steps, "train-vae", 0, log::stderr_is_terminal());
  vae->train();
  for (int64_t step = 0; step < tc.steps; ++step) {
    auto indices = at::randint(trainable, {tc.batch_size}, generator, at::kLong);
    std::vector<int64_t> picked(static_cast<size_t>(tc.batch_size));
    for (int64_t i = 0; i < tc.batch_size; ++i) picked[i] = split.training[indices.data_ptr<int64_t>()[i]];
    auto x = data->get_batch(picked).images.to(device);
    auto posterior = vae->encode(x);
    auto error = vae->decode(posterior.sample()) - x;
    auto rec = l1 ? error.abs() : error.pow(2);
    auto kl = posterior.kl().mean();
    auto loss = rec.sum() / static_cast<double>(tc.batch_size) + tc.kl_weight * kl;
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (window.add(step, {rec.mean(), kl})) {
      const auto means = window.take();  // reconstruction per pixel, KL
      if (summary.first_loss == 0.0) summary.first_loss = means[0];
      summary.last_loss = means[0];
      bar.clear();
      spdlog::info("step {}/{}  {} per pixel {:.4f}  kl {:.1f}", step + 1, tc.steps, tc.loss, means[0], means[1]);
    }
    bar.update(step + 1);
  }
  bar.finish();

  // Held-out reconstructions from the posterior mean.
  vae->eval();
  torch::NoGradGuard no_grad;
  double squared_error = 0.0, mean_sum = 0.0, square_sum = 0.0;
  int64_t pixels = 0, latent_elements = 0;
  at::Tensor shown_originals, shown_reconstructions;
  for (int64_t first = 0; first < held_out; first += tc.batch_size) {
    const std::vector<int64_t> part(split.held_out.begin() + first,
                                    split.held_out.begin() + std::min(first + tc.batch_size, held_out));
    auto x = data->get_batch(part).images.to(device);
    auto mean = vae->encode(x).mean;
    auto reconstruction = vae->decode(mean).clamp(-1, 1);
    squared_error += ((x - reconstruction) / 2).pow(2).sum().item<double>();
    pixels += x.numel();
    mean_sum += mean.sum().item<double>();
    square_sum += mean.pow(2).sum().item<double>();
    latent_elements += mean.numel();
    if (!shown_originals.defined()) {
      shown_originals = x.narrow(0, 0, std::min<int64_t>(16, x.size(0))).cpu();
      shown_reconstructions = reconstruction.narrow(0, 0, shown_originals.size(0)).cpu();
    }
  }
  summary.psnr_db = psnr_db(squared_error / static_cast<double>(pixels));
  const double latent_mean = mean_sum / static_cast<double>(latent_elements);
  summary.latent_std = std::sqrt(square_sum / static_cast<double>(latent_elements) - latent_mean * latent_mean);
  summary.scaling_factor = 1.0 / summary.latent_std;

  vae->to(at::kCPU);
  AutoencoderSpec spec{options, summary.scaling_factor};
  save_autoencoder(vae, spec, weights_path,
                   {{"psnr_db", std::to_string(summary.psnr_db)}, {"steps", std::to_string(tc.steps)}});
  // Rows of 8: originals, then their reconstructions.
  const int64_t shown = shown_originals.size(0), columns = std::min<int64_t>(8, shown);
  std::vector<at::Tensor> rows;
  for (int64_t r = 0; r + columns <= shown; r += columns) {
    rows.push_back(shown_originals.narrow(0, r, columns));
    rows.push_back(shown_reconstructions.narrow(0, r, columns));
  }
  write_image_grid(run_dir + "/reconstructions.png", at::cat(rows, 0), columns);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("held-out PSNR {:.2f} dB over {} images; latent std {:.4f} -> scaling_factor {:.5f}; "
               "wrote {} and {}/reconstructions.png in {}", summary.psnr_db, held_out, summary.latent_std,
               summary.scaling_factor, weights_path, run_dir, format_duration(summary.seconds));
  return summary;
}

}  // namespace ditlab
