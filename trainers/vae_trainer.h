// `dit train-vae`: trains an AutoencoderKL (autoencoder.* architecture, autoencoder.train.*)
// on the configured image dataset with LDM's objective (reconstruction summed over pixels plus
// kl_weight times the KL), holds out the dataset's last images, and writes into run.dir:
//   autoencoder.safetensors  diffusers' layout, architecture and scaling factor in the metadata
//   reconstructions.png      held-out originals (odd rows) over their reconstructions (even rows)
//   config.yaml, run_info.yaml, train.log
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "src/config/experiment_config.h"

namespace ditlab {

struct VaeTrainSummary {
  std::string weights_path;
  double first_loss = 0.0, last_loss = 0.0;  // per-pixel reconstruction error, first/last 50 steps
  double psnr_db = 0.0;         // held-out, reconstructions from the posterior mean, [0, 1] range
  double latent_std = 0.0;      // of the held-out posterior means
  double scaling_factor = 0.0;  // 1 / latent_std, stored with the weights
  double seconds = 0.0;
};

VaeTrainSummary train_vae(const ExperimentConfig& config, const std::string& command_line);

// PSNR in dB of `reconstructions` against `originals`, both in [-1, 1], measured on [0, 1].
double psnr_db(const at::Tensor& originals, const at::Tensor& reconstructions);
// The same from a mean squared error measured on [0, 1].
double psnr_db(double mse);

}  // namespace ditlab
