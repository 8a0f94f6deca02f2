// The stage between images and the backbone, as autoencoder.type says: identity passes pixels
// through; kl encodes with an AutoencoderKL and hands the backbone
//   latents = scaling_factor * (posterior sample, or its mean),
// and decodes latents / scaling_factor back to images. The scaling factor is applied here and
// nowhere else.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>

#include "models/vae/autoencoder_kl.h"
#include "src/config/experiment_config.h"

namespace ditlab {

// What the backbone sees of an image with `image_channels` channels.
struct LatentShape {
  int64_t channels = 0;
  int64_t downsampling = 1;  // image side / latent side
};
// Reads only the architecture for kl (no module is built). Throws ConfigError when the
// autoencoder's input channels differ from the images'.
LatentShape latent_shape(const AutoencoderConfig& config, int64_t image_channels);
// The latents' side for images of side `image_size`; ConfigError naming data.image_size when the
// downsampling does not divide it.
int64_t latent_side(int64_t image_size, const LatentShape& latent);

class AutoencoderStage {
 public:
  // The kl autoencoder of `config`, loaded and moved to `device`; null for identity.
  static std::unique_ptr<AutoencoderStage> create(const AutoencoderConfig& config, const c10::Device& device);

  // images [N, C, H, W] in [-1, 1] on the stage's device -> scaled latents (float32). With
  // sample_posterior, `posterior_noise` (standard normal, the latents' shape) draws the sample.
  at::Tensor encode(const at::Tensor& images, const at::Tensor& posterior_noise) const;
  // The unscaled posterior of images (what `dit encode` caches).
  DiagonalGaussian posterior(const at::Tensor& images) const;
  // Scaled latents from an unscaled posterior's mean and std (or from one unscaled sample, with
  // `std` undefined): with sample_posterior and a std, mean + std * posterior_noise, else the mean.
  at::Tensor latents_from(const at::Tensor& mean, const at::Tensor& std,
                          const at::Tensor& posterior_noise) const;
  // Scaled latents -> images in [-1, 1] (clamped), float32 on the stage's device.
  at::Tensor decode(const at::Tensor& latents) const;

  double scaling_factor() const { return scaling_factor_; }
  bool samples_posterior() const { return sample_posterior_; }
  const AutoencoderKLOptions& options() const { return vae_->options(); }

 private:
  AutoencoderStage(AutoencoderKL vae, double scaling_factor, bool sample_posterior);
  mutable AutoencoderKL vae_;  // forward passes are not const in LibTorch
  double scaling_factor_;
  bool sample_posterior_;
};

}  // namespace ditlab
