// AutoencoderKL: the Stable Diffusion VAE (CompVis latent diffusion, as diffusers'
// AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D and a UNetMidBlock2D with one
// self-attention). Registered names are diffusers' state-dict keys (current attention names), so
// stabilityai/sd-vae-ft-ema and -mse load without remapping beyond the old attention names
// (vae_weights.h).
//
//   encoder: conv_in -> per level: resnets (layers_per_block), a stride-2 downsampler except
//            at the last level -> mid block (resnet, attention, resnet) -> GroupNorm, SiLU ->
//            conv_out to 2 x latent channels (mean, log-variance); then quant_conv (1x1)
//   decoder: post_quant_conv (1x1) -> conv_in -> mid block -> per level, widest first:
//            resnets (layers_per_block + 1), nearest x2 upsampler except at the last ->
//            GroupNorm, SiLU -> conv_out
// GroupNorms use norm_num_groups groups and eps 1e-6; the attention is single-headed.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include <vector>

#include "models/layers/linear.h"

namespace ditlab {

struct AutoencoderKLOptions {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<int64_t> block_out_channels = {128, 256, 512, 512};  // Stable Diffusion's
  int64_t layers_per_block = 2;
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  // The factor between images and latents: 2^(levels - 1) (8 for Stable Diffusion's).
  int64_t downsampling() const { return int64_t{1} << (block_out_channels.size() - 1); }
};

// The encoder's posterior N(mean, exp(logvar)) per latent element.
struct DiagonalGaussian {
  at::Tensor mean, logvar;  // [N, latent, h, w]; logvar clamped to [-30, 20] as diffusers
  at::Tensor std() const;
  at::Tensor sample(c10::optional<at::Generator> generator = c10::nullopt) const;
  // KL(posterior || N(0, I)) per sample: 0.5 * sum(mean^2 + var - 1 - logvar) over C, H, W.
  at::Tensor kl() const;
};

// diffusers' ResnetBlock2D: GroupNorm, SiLU, conv3x3, GroupNorm, SiLU, conv3x3, plus the input
// (through a 1x1 conv_shortcut when the width changes).
class VaeResnetBlockImpl : public torch::nn::Module {
 public:
  VaeResnetBlockImpl(int64_t in_channels, int64_t out_channels, int64_t groups);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
};
TORCH_MODULE(VaeResnetBlock);

// Single-head self-attention over the pixels of a feature map, with a residual (diffusers'
// Attention as the VAE uses it: group_norm, to_q, to_k, to_v, to_out.0).
class VaeAttentionImpl : public torch::nn::Module {
 public:
  VaeAttentionImpl(int64_t channels, int64_t groups);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::GroupNorm group_norm{nullptr};
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // [0]: the output Linear
};
TORCH_MODULE(VaeAttention);

// UNetMidBlock2D: resnets.0, attentions.0, resnets.1.
class VaeMidBlockImpl : public torch::nn::Module {
 public:
  VaeMidBlockImpl(int64_t channels, int64_t groups);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr};
};
TORCH_MODULE(VaeMidBlock);

// One level of the encoder (down = true: DownEncoderBlock2D, key "downsamplers") or of the
// decoder (UpDecoderBlock2D, key "upsamplers"), each resampler a module holding "conv".
class VaeLevelImpl : public torch::nn::Module {
 public:
  VaeLevelImpl(int64_t in_channels, int64_t out_channels, int64_t blocks, int64_t groups, bool down,
               bool resample);
  at::Tensor forward(const at::Tensor& x);
  bool down;
  torch::nn::ModuleList resnets{nullptr}, resamplers{nullptr};
};
TORCH_MODULE(VaeLevel);

class VaeEncoderImpl : public torch::nn::Module {
 public:
  explicit VaeEncoderImpl(const AutoencoderKLOptions& options);
  at::Tensor forward(const at::Tensor& x);  // [N, C, H, W] -> [N, 2 latent, H/f, W/f]
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};
  VaeMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeEncoder);

class VaeDecoderImpl : public torch::nn::Module {
 public:
  explicit VaeDecoderImpl(const AutoencoderKLOptions& options);
  at::Tensor forward(const at::Tensor& z);  // [N, latent, h, w] -> [N, C, h f, w f]
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList up_blocks{nullptr};
  VaeMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeDecoder);

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const AutoencoderKLOptions& options);

  // Images in [-1, 1] -> the posterior over (unscaled) latents.
  DiagonalGaussian encode(const at::Tensor& images);
  // (Unscaled) latents -> images, nominally in [-1, 1].
  at::Tensor decode(const at::Tensor& latents);

  const AutoencoderKLOptions& options() const { return options_; }

  VaeEncoder encoder{nullptr};
  VaeDecoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};

 private:
  AutoencoderKLOptions options_;
};
TORCH_MODULE(AutoencoderKL);

}  // namespace ditlab
