#include "trainers/sampling.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>

#include <functional>
#include <vector>

#include "models/registry.h"
#include "models/vae/autoencoder_stage.h"
#include "src/common/compat.h"
#include "src/common/error.h"
#include "src/common/progress.h"
#include "src/common/sample_rng.h"
#include "src/common/text.h"
#include "src/diffusion/noise_schedule.h"
#include "src/diffusion/samplers.h"
#include "src/io/image_grid.h"
#include "src/io/safetensors.h"

namespace ditlab {

void check_sample_config(const ModelConfig& model, const DiffusionConfig& diffusion,
                         const SampleConfig& sample, const AutoencoderConfig& autoencoder) {
  if (autoencoder.type != "identity" && sample.clip_denoised) {
    throw ConfigError("sample.clip_denoised clamps the predicted x0 to [-1, 1], which fits pixels, not "
                      "latents (autoencoder.type " + autoencoder.type + "): set sample.clip_denoised=false "
                      "(as DiT samples latents)");
  }
  if (sample.steps > diffusion.steps) {
    throw ConfigError("sample.steps " + std::to_string(sample.steps) + " exceeds diffusion.steps " +
                      std::to_string(diffusion.steps));
  }
  if (sample.cfg_scale != 1.0 && model.class_dropout_prob <= 0.0) {
    throw ConfigError("sample.cfg_scale " + std::to_string(sample.cfg_scale) +
                      " needs the null class, but model.class_dropout_prob is 0 (the model has no "
                      "unconditional embedding); set sample.cfg_scale=1");
  }
  if (sample.cache_interval > 1) {
    if (!has_sampling_cache(model.name)) {
      throw ConfigError("sample.cache_interval " + std::to_string(sample.cache_interval) +
                        ": model.name '" + model.name + "' has no feature cache (Skip-Cache needs "
                        "a skip-dit model); use sample.cache_interval=1");
    }
    if (model.depth > 0 && sample.cache_depth >= model.depth / 2) {
      throw ConfigError("sample.cache_depth " + std::to_string(sample.cache_depth) +
                        " must be below half of model.depth " + std::to_string(model.depth) +
                        " (so that some blocks are skipped)");
    }
  }
  if (model.in_channels > 0 && sample.cfg_channels > model.in_channels) {
    throw ConfigError("sample.cfg_channels " + std::to_string(sample.cfg_channels) +
                      " exceeds the model's " + std::to_string(model.in_channels) +
                      " noise channels (0 guides all of them)");
  }
}

void check_sample_output(const std::string& path) {
  if (ends_with(path, ".safetensors")) return;
  if (!ends_with(path, ".png")) {
    throw UsageError("output '" + path + "': expected a .png or .safetensors file name");
  }
#ifndef DITLAB_WITH_OPENCV
  throw IoError("cannot write '" + path + "': this build has no OpenCV (DITLAB_WITH_OPENCV=OFF); "
                "write samples as .safetensors instead");
#endif
}

namespace {

// One batch of generate_samples: samples first_index .. first_index + N - 1, on the device.
at::Tensor sample_batch(Backbone& model, const GaussianDiffusion& diffusion, const SampleConfig& sample,
                        const at::Tensor& labels, const c10::Device& device, int64_t first_index,
                        const std::function<void()>& on_step) {
  const BackboneShape shape = model.shape();
  const int64_t n = labels.size(0);
  // One CPU stream per sample (drawn on the CPU, so a seed gives the same samples on every
  // device); the guided batch's second half repeats the first's noise, as its rows are copies.
  std::vector<at::Generator> streams;
  streams.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    streams.push_back(sample_generator(static_cast<uint64_t>(sample.seed), kSamplingStream,
                                       static_cast<uint64_t>(first_index + i)));
  }
  const std::vector<int64_t> one_sample = {shape.in_channels, shape.input_size, shape.input_size};
  auto draw_noise = [&](int64_t rows) {
    if (rows % n != 0) {
      throw Error("sampling: noise for " + std::to_string(rows) + " rows, not a multiple of " +
                  std::to_string(n) + " samples");
    }
    std::vector<at::Tensor> per_sample;
    per_sample.reserve(static_cast<size_t>(n));
    for (auto& stream : streams) {
      per_sample.push_back(at::randn(one_sample, stream, at::TensorOptions().dtype(at::kFloat)));
    }
    at::Tensor noise = at::stack(per_sample);
    return rows == n ? noise : noise.repeat({rows / n, 1, 1, 1});
  };
  auto z = draw_noise(n);
  // The samplers' own generator goes unused: options.noise below supplies every draw.
  auto generator = at::detail::createCPUGenerator(static_cast<uint64_t>(sample.seed));
  auto y = labels.to(at::kLong);
  const bool guided = sample.cfg_scale != 1.0;
  if (guided && !shape.has_null_class) {
    throw ConfigError("sample.cfg_scale != 1 needs a model with a null class (trained with "
                      "model.class_dropout_prob > 0)");
  }
  if (guided) {
    // [cond; uncond] over the same noise; the null label is num_classes.
    z = at::cat({z, z}, 0);
    y = at::cat({y, at::full_like(y, shape.num_classes)}, 0);
  }
  z = z.to(device);
  y = y.to(device);
  const bool bf16 = sample.precision == "bf16";
  ModelFn fn = [&](const at::Tensor& x, const at::Tensor& t) {
    // Only the backbone runs under autocast; the sampler's updates stay float32.
    compat::AutocastGuard autocast(x.device().type(), at::kBFloat16, bf16);
    at::Tensor out = guided ? model.forward_with_cfg(x, t, y, sample.cfg_scale, sample.cfg_channels)
                            : model.forward(x, t, y).out;
    return out.to(at::kFloat);
  };
  SamplerOptions options;
  options.clip_denoised = sample.clip_denoised;
  options.eta = sample.eta;
  // Per-step noise (DDPM, DDIM with eta > 0) is drawn on the host; to a GPU it goes from pinned
  // memory without blocking, so the host draws the next step's while the device runs this one.
  options.noise = [&](const at::Tensor& like) {
    at::Tensor noise = draw_noise(like.size(0));
    if (!like.device().is_cuda()) return noise.to(like.device());
    return noise.pin_memory().to(like.device(), /*non_blocking=*/true);
  };
  options.on_step = [&](int64_t, int64_t) { on_step(); };
  model.begin_sampling({sample.cache_interval, sample.cache_depth});
  at::Tensor x;
  try {
    x = sample.sampler == "ddpm" ? ddpm_sample(diffusion, fn, z, generator, options)
                                 : ddim_sample(diffusion, fn, z, generator, options);
  } catch (...) {
    model.end_sampling();
    throw;
  }
  model.end_sampling();
  return x.narrow(0, 0, n);
}

}  // namespace

at::Tensor generate_samples(Backbone& model, const DiffusionConfig& diffusion_config,
                            const SampleConfig& sample, const at::Tensor& labels,
                            const c10::Device& device, int64_t first_index,
                            const AutoencoderStage* decoder) {
  torch::NoGradGuard no_grad;
  model.eval();
  const BackboneShape shape = model.shape();
  const bool learn_sigma = shape.out_channels == 2 * shape.in_channels;
  GaussianDiffusion base(make_betas(diffusion_config.schedule, diffusion_config.steps,
                                    diffusion_config.beta_start, diffusion_config.beta_end),
                         learn_sigma);
  const auto diffusion = base.respaced(space_timesteps(base.num_timesteps(), std::to_string(sample.steps)));
  const int64_t n = labels.size(0);
  if (n == 0) return at::zeros({0, shape.in_channels, shape.input_size, shape.input_size});
  // sample.batch_size samples at a time (twice as many rows with guidance), each decoded as
  // soon as it is drawn: a grid of 1000 classes x 8 would not fit a GPU in one batch. Every
  // sample's noise is its own stream, so the batches change nothing in the images.
  const int64_t batch = sample.batch_size, batches = (n + batch - 1) / batch;
  ProgressBar bar(batches * diffusion.num_timesteps(), "sample");
  int64_t steps_done = 0;
  std::vector<at::Tensor> parts;
  for (int64_t first = 0; first < n; first += batch) {
    const int64_t rows = std::min(batch, n - first);
    at::Tensor x = sample_batch(model, diffusion, sample, labels.narrow(0, first, rows), device,
                                first_index + first, [&] { bar.update(++steps_done); });
    if (decoder) x = decoder->decode(x.to(device));
    parts.push_back(x.to(at::kCPU, at::kFloat));
  }
  bar.finish();
  return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
}

at::Tensor grid_labels(int64_t num_classes, int64_t num_per_class) {
  return at::arange(num_classes, at::TensorOptions().dtype(at::kLong)).repeat_interleave(num_per_class);
}

void write_samples(const std::string& path, const at::Tensor& samples, const at::Tensor& labels,
                   int64_t columns) {
  check_sample_output(path);
  if (ends_with(path, ".png")) {
    write_image_grid(path, samples, columns);
  } else {
    write_safetensors(path, {{"samples", samples.clamp(-1, 1).contiguous()},
                             {"labels", labels.to(at::kLong)}});
  }
}

}  // namespace ditlab
