// U-DiT's downsampled-token self-attention (DownSample_Attn with downsampler 'dwconv5',
// down_shortcut, attn_type 'v2', posemb 'rope2d'), on [N, d, H, W] feature maps:
//   1. x' = DWConv5x5(x) + x
//   2. polyphase split: the 4 interleaved stride-2 sub-grids (pixels (2i+dh, 2j+dw), group
//      2*dh + dw) become 4 token groups of H*W/4 tokens, channels unchanged
//   3. per group, independently: qkv Linear, 2-D RoPE on sub-grid coordinates, cosine attention
//      with a learnable per-head logit scale clamped at ln 100 (cost 4 * (N/4)^2 = N^2/4)
//   4. the groups go back to their pixels, then a 1x1 conv.
#pragma once
#include "models/mup/width_roles.h"
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include "models/layers/linear.h"

namespace ditlab {

// [N, d, H, W] -> [N, 4, H*W/4, d]; group g = 2*dh + dw holds pixel (2i+dh, 2j+dw) at token
// i * W/2 + j.
at::Tensor polyphase_split(const at::Tensor& x);
// The inverse: [N, 4, H*W/4, d] -> [N, d, H, W].
at::Tensor polyphase_merge(const at::Tensor& groups, int64_t height, int64_t width);

// The official DownSampler: a depthwise conv (key "layer") plus the identity.
class TokenDownsamplerImpl : public torch::nn::Module {
 public:
  explicit TokenDownsamplerImpl(int64_t dim);
  at::Tensor forward(const at::Tensor& x) { return layer->forward(x) + x; }
  torch::nn::Conv2d layer{nullptr};
};
TORCH_MODULE(TokenDownsampler);

class DownsampledAttentionImpl : public torch::nn::Module {
 public:
  DownsampledAttentionImpl(int64_t dim, int64_t num_heads);
  at::Tensor forward(const at::Tensor& x);  // [N, d, H, W] -> [N, d, H, W]; H, W even
  // Cosine attention: its logits do not grow with head_dim, so it is not a MupAttention.
  void declare_width_roles(WidthRoles roles) const;

  int64_t num_heads;
  TokenDownsampler downsampler{nullptr};
  Linear to_qkv{nullptr};
  torch::nn::Conv2d to_out{nullptr};
  at::Tensor logit_scale;  // [heads, 1, 1], starts at ln 10
};
TORCH_MODULE(DownsampledAttention);

}  // namespace ditlab
