// The autoencoder's weights file: diffusers' AutoencoderKL safetensors layout
// (stabilityai/sd-vae-ft-ema and -mse, diffusion_pytorch_model.safetensors), and the
// architecture that goes with it. diffusers keeps the architecture in config.json beside the
// weights; files ditlab writes carry the same JSON in their metadata ("autoencoder_config").
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "models/vae/autoencoder_kl.h"

namespace ditlab {

// What a weights file needs beside its tensors.
struct AutoencoderSpec {
  AutoencoderKLOptions options;
  double scaling_factor = 0.18215;  // latents = scaling_factor * posterior sample (SD's)
};

// Parses diffusers' config.json text for AutoencoderKL; `source` names it in errors. Absent
// keys take Stable Diffusion's values (AutoencoderKLOptions), not diffusers' class defaults; a
// real config.json lists them all. Errors: unknown keys; blocks other than DownEncoderBlock2D /
// UpDecoderBlock2D; an activation other than silu (or its alias swish); keys this model does
// not implement (shift_factor, latents_mean / latents_std, use_quant_conv false, ...) at values
// that would change the result.
AutoencoderSpec parse_autoencoder_config(const std::string& json, const std::string& source);
std::string autoencoder_config_json(const AutoencoderSpec& spec);

// The architecture of `weights_path`: its "autoencoder_config" metadata, else `config_path`
// (when given), else config.json in the same folder. Throws ConfigError naming what it tried.
AutoencoderSpec read_autoencoder_spec(const std::string& weights_path, const std::string& config_path = "");

// diffusers' tensors renamed to the current layout: the attention's old names (query, key,
// value, proj_attn) become to_q, to_k, to_v, to_out.0, and 1x1-conv attention weights
// [C, C, 1, 1] become [C, C].
std::map<std::string, at::Tensor> current_vae_keys(std::map<std::string, at::Tensor> tensors);

// Builds the autoencoder of `weights_path` and loads it strictly (a missing, unexpected or
// mis-shaped key is a ShapeError naming it); the module is in eval mode, without gradients.
AutoencoderKL load_autoencoder(const std::string& weights_path, const std::string& config_path,
                               AutoencoderSpec* spec_out = nullptr);

// Writes the weights in diffusers' layout with the architecture in the metadata.
void save_autoencoder(const AutoencoderKL& model, const AutoencoderSpec& spec, const std::string& path,
                      std::map<std::string, std::string> metadata = {});

}  // namespace ditlab
