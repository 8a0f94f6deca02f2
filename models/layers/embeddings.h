// Embedders shared by the DiT family (facebookresearch/DiT models.py and timm's PatchEmbed).
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include "models/layers/linear.h"
#include "models/mup/width_roles.h"

namespace ditlab {

// Sinusoidal features of (possibly fractional) timesteps: [N] -> [N, dim], cos half first.
at::Tensor timestep_frequency_embedding(const at::Tensor& t, int64_t dim,
                                        double max_period = 10000.0);

// Mirrors DiT's TimestepEmbedder: 256 frequencies -> Linear -> SiLU -> Linear. Keys mlp.0, mlp.2.
class TimestepEmbedderImpl : public torch::nn::Module {
 public:
  explicit TimestepEmbedderImpl(int64_t hidden_size, int64_t frequency_size = 256);
  at::Tensor forward(const at::Tensor& t);  // [N] -> [N, D]
  // mlp.0 input, mlp.2 hidden; both drawn N(0, 0.02) by every backbone here.
  void declare_width_roles(WidthRoles roles) const;

  torch::nn::Sequential mlp{nullptr};
  int64_t frequency_size;
};
TORCH_MODULE(TimestepEmbedder);

// Mirrors DiT's LabelEmbedder: a table with one extra "null" row (id num_classes) for
// classifier-free guidance when with_null_class (as DiT does when label dropout > 0). Label dropout happens in the trainer (per-sample randomness), so
// this module is deterministic.
class LabelEmbedderImpl : public torch::nn::Module {
 public:
  LabelEmbedderImpl(int64_t num_classes, int64_t hidden_size, bool with_null_class);
  at::Tensor forward(const at::Tensor& y);  // [N] -> [N, D]
  void declare_width_roles(WidthRoles roles) const;  // the table is input-like, N(0, 0.02)

  torch::nn::Embedding embedding_table{nullptr};
  int64_t num_classes;
};
TORCH_MODULE(LabelEmbedder);

// timm's PatchEmbed: Conv2d(C, D, p, stride p), then row-major tokens.
class PatchEmbedImpl : public torch::nn::Module {
 public:
  PatchEmbedImpl(int64_t in_channels, int64_t hidden_size, int64_t patch_size);
  at::Tensor forward(const at::Tensor& x);  // [N, C, H, W] -> [N, T, D]
  // proj is input-like; `init` is how the owning backbone initialises it.
  void declare_width_roles(WidthRoles roles, InitLaw init) const;

  torch::nn::Conv2d proj{nullptr};
};
TORCH_MODULE(PatchEmbed);

// PatchEmbed's inverse for a model's output: [N, g*g, p*p*C] -> [N, C, g*p, g*p], each token's
// vector ordered (p_row, p_col, channel) as the official DiT's unpatchify.
at::Tensor unpatchify(const at::Tensor& tokens, int64_t patch_size, int64_t channels);

// MAE's fixed 2-D sin-cos position embedding: [grid*grid, dim] float32. The first dim/2 channels
// encode the column, the rest the row; each as [sin, cos] of pos * 10000^(-k/(dim/4)).
at::Tensor sincos_pos_embed_2d(int64_t dim, int64_t grid_size);

}  // namespace ditlab
