#include "models/layers/embeddings.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include <cmath>

#include "src/common/error.h"

namespace ditlab {

at::Tensor timestep_frequency_embedding(const at::Tensor& t, int64_t dim, double max_period) {
  const int64_t half = dim / 2;
  auto options = at::TensorOptions().dtype(at::kFloat).device(t.device());
  auto freqs = at::exp(-std::log(max_period) * at::arange(0, half, options) / half);  // [half]
  auto args = t.to(at::kFloat).unsqueeze(1) * freqs.unsqueeze(0);  // [N, half]
  auto embedding = at::cat({at::cos(args), at::sin(args)}, -1);    // [N, 2*half]
  if (dim % 2) embedding = at::cat({embedding, at::zeros_like(embedding.narrow(1, 0, 1))}, -1);
  return embedding;
}

TimestepEmbedderImpl::TimestepEmbedderImpl(int64_t hidden_size, int64_t frequency_size)
    : frequency_size(frequency_size) {
  mlp = register_module("mlp", torch::nn::Sequential(Linear(frequency_size, hidden_size),
                                                     torch::nn::SiLU(),
                                                     Linear(hidden_size, hidden_size)));
}

at::Tensor TimestepEmbedderImpl::forward(const at::Tensor& t) {
  auto features = timestep_frequency_embedding(t, frequency_size);
  return mlp->forward(features);
}

LabelEmbedderImpl::LabelEmbedderImpl(int64_t num_classes, int64_t hidden_size,
                                     bool with_null_class)
    : num_classes(num_classes) {
  embedding_table = register_module(
      "embedding_table", torch::nn::Embedding(num_classes + (with_null_class ? 1 : 0), hidden_size));
}

at::Tensor LabelEmbedderImpl::forward(const at::Tensor& y) { return embedding_table->forward(y); }

void TimestepEmbedderImpl::declare_width_roles(WidthRoles roles) const {
  roles.layer("mlp.0", WidthRole::kInput, InitLaw::kConstant);
  roles.layer("mlp.2", WidthRole::kHidden, InitLaw::kConstant);
}

void LabelEmbedderImpl::declare_width_roles(WidthRoles roles) const {
  roles.param("embedding_table.weight", WidthRole::kInput, InitLaw::kConstant);
}

void PatchEmbedImpl::declare_width_roles(WidthRoles roles, InitLaw init) const {
  roles.layer("proj", WidthRole::kInput, init);
}

PatchEmbedImpl::PatchEmbedImpl(int64_t in_channels, int64_t hidden_size, int64_t patch_size) {
  proj = register_module("proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(
                                                       in_channels, hidden_size, patch_size)
                                                       .stride(patch_size)
                                                       .bias(true)));
}

at::Tensor PatchEmbedImpl::forward(const at::Tensor& x) {
  auto patches = proj->forward(x);              // [N, D, H/p, W/p]
  return patches.flatten(2).transpose(1, 2);    // [N, T, D], token = row * (W/p) + col
}

at::Tensor sincos_pos_embed_2d(int64_t dim, int64_t grid_size) {
  if (dim % 4 != 0) {
    throw ShapeError("the 2-D sin-cos position embedding needs a width divisible by 4, got " +
                     std::to_string(dim));
  }
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t quarter = dim / 4;
  auto omega = 1.0 / at::pow(10000.0, at::arange(quarter, f64) / static_cast<double>(quarter));
  auto encode = [&](const at::Tensor& pos) {  // [T] -> [T, dim/2]
    auto out = pos.unsqueeze(1) * omega.unsqueeze(0);
    return at::cat({at::sin(out), at::cos(out)}, 1);
  };
  auto coords = at::arange(grid_size, f64);
  auto rows = coords.repeat_interleave(grid_size);  // token i*g+j has row i
  auto cols = coords.repeat({grid_size});           // and column j
  return at::cat({encode(cols), encode(rows)}, 1).to(at::kFloat);  // [T, dim]
}

at::Tensor unpatchify(const at::Tensor& tokens, int64_t patch_size, int64_t channels) {
  const int64_t p = patch_size, n = tokens.size(0);
  const auto g = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(tokens.size(1)))));
  auto x = tokens.reshape({n, g, g, p, p, channels});  // [N, h, w, p, q, C]
  x = x.permute({0, 5, 1, 3, 2, 4});                   // -> [N, C, h, p, w, q]
  return x.reshape({n, channels, g * p, g * p});        // -> [N, C, H, W]
}

}  // namespace ditlab
