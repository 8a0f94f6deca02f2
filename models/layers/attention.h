// Multi-head attention as in timm's Attention (used by DiT): fused qkv projection, then proj.
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include "models/layers/linear.h"
#include "models/mup/mup_modules.h"
#include "models/mup/width_roles.h"

namespace ditlab {

class AttentionImpl : public torch::nn::Module, public MupAttention {
 public:
  AttentionImpl(int64_t dim, int64_t num_heads);
  at::Tensor forward(const at::Tensor& x);  // [N, T, D] -> [N, T, D]
  int64_t head_dim() const override { return qkv->options.in_features() / num_heads; }
  void declare_width_roles(WidthRoles roles) const;

  Linear qkv{nullptr}, proj{nullptr};
  int64_t num_heads;
};
TORCH_MODULE(Attention);

// Queries from x, keys and values from a context sequence (the cross-attention DiT variant).
class CrossAttentionImpl : public torch::nn::Module, public MupAttention {
 public:
  CrossAttentionImpl(int64_t dim, int64_t num_heads);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context);  // [N,T,D], [N,S,D]
  int64_t head_dim() const override { return q->options.in_features() / num_heads; }
  void declare_width_roles(WidthRoles roles) const;

  Linear q{nullptr}, kv{nullptr}, proj{nullptr};
  int64_t num_heads;
};
TORCH_MODULE(CrossAttention);

// The MLP of a transformer block: fc1 -> GELU (tanh approximation, as DiT) -> fc2.
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t dim, int64_t hidden_dim);
  at::Tensor forward(const at::Tensor& x);
  void declare_width_roles(WidthRoles roles) const;

  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Mlp);

}  // namespace ditlab
