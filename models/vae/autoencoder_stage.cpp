#include "models/vae/autoencoder_stage.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "models/vae/vae_weights.h"
#include "src/common/error.h"

namespace ditlab {
namespace {
void require_weights(const AutoencoderConfig& config) {
  if (config.weights.empty()) {
    throw ConfigError("autoencoder.type kl needs autoencoder.weights: the AutoencoderKL's .safetensors "
                      "(from dit train-vae, or diffusers' sd-vae-ft-ema/mse; docs/latents.md)");
  }
}
}  // namespace

LatentShape latent_shape(const AutoencoderConfig& config, int64_t image_channels) {
  if (config.type == "identity") return {image_channels, 1};
  require_weights(config);
  const AutoencoderSpec spec = read_autoencoder_spec(config.weights, config.config);
  if (spec.options.in_channels != image_channels) {
    throw ConfigError("autoencoder.weights " + config.weights + " encodes " +
                      std::to_string(spec.options.in_channels) + "-channel images, but the data has " +
                      std::to_string(image_channels) + " channels");
  }
  return {spec.options.latent_channels, spec.options.downsampling()};
}

int64_t latent_side(int64_t image_size, const LatentShape& latent) {
  if (image_size % latent.downsampling != 0) {
    throw ConfigError("data.image_size " + std::to_string(image_size) + " is not a multiple of "
                      "the autoencoder's downsampling " + std::to_string(latent.downsampling));
  }
  return image_size / latent.downsampling;
}

std::unique_ptr<AutoencoderStage> AutoencoderStage::create(const AutoencoderConfig& config,
                                                           const c10::Device& device) {
  if (config.type == "identity") return nullptr;
  require_weights(config);
  AutoencoderSpec spec;
  AutoencoderKL vae = load_autoencoder(config.weights, config.config, &spec);
  vae->to(device);
  const double scale = config.scaling_factor > 0 ? config.scaling_factor : spec.scaling_factor;
  return std::unique_ptr<AutoencoderStage>(new AutoencoderStage(vae, scale, config.sample_posterior));
}

AutoencoderStage::AutoencoderStage(AutoencoderKL vae, double scaling_factor, bool sample_posterior)
    : vae_(std::move(vae)), scaling_factor_(scaling_factor), sample_posterior_(sample_posterior) {}

DiagonalGaussian AutoencoderStage::posterior(const at::Tensor& images) const {
  torch::NoGradGuard no_grad;
  return vae_->encode(images.to(at::kFloat));
}

at::Tensor AutoencoderStage::encode(const at::Tensor& images, const at::Tensor& posterior_noise) const {
  const DiagonalGaussian p = posterior(images);
  return latents_from(p.mean, sample_posterior_ ? p.std() : at::Tensor(), posterior_noise);
}

at::Tensor AutoencoderStage::latents_from(const at::Tensor& mean, const at::Tensor& std,
                                          const at::Tensor& posterior_noise) const {
  at::Tensor z = mean.to(at::kFloat);
  if (sample_posterior_ && std.defined()) {
    if (!posterior_noise.defined() || posterior_noise.sizes() != z.sizes()) {
      throw ShapeError("autoencoder: the posterior noise must have the latents' shape");
    }
    z = z + std.to(at::kFloat) * posterior_noise;
  }
  return z * scaling_factor_;
}

at::Tensor AutoencoderStage::decode(const at::Tensor& latents) const {
  torch::NoGradGuard no_grad;
  return vae_->decode(latents.to(at::kFloat) / scaling_factor_).clamp(-1, 1);
}

}  // namespace ditlab
