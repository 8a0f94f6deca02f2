#include "models/udit/downsampled_attention.h"

#include <ATen/ATen.h>

#include <cmath>

#include "models/layers/rope2d.h"
#include "src/common/compat.h"
#include "src/common/error.h"
#include "models/mup/activation_probe.h"

namespace ditlab {

at::Tensor polyphase_split(const at::Tensor& x) {
  const int64_t n = x.size(0), d = x.size(1), h = x.size(2) / 2, w = x.size(3) / 2;
  return x.reshape({n, d, h, 2, w, 2})
      .permute({0, 3, 5, 2, 4, 1})  // [n, dh, dw, h, w, d]
      .reshape({n, 4, h * w, d});
}

at::Tensor polyphase_merge(const at::Tensor& groups, int64_t height, int64_t width) {
  const int64_t n = groups.size(0), d = groups.size(3), h = height / 2, w = width / 2;
  return groups.reshape({n, 2, 2, h, w, d})
      .permute({0, 5, 3, 1, 4, 2})  // [n, d, h, dh, w, dw]
      .reshape({n, d, height, width});
}

TokenDownsamplerImpl::TokenDownsamplerImpl(int64_t dim) {
  layer = register_module(
      "layer", torch::nn::Conv2d(torch::nn::Conv2dOptions(dim, dim, 5).padding(2).groups(dim)));
}

DownsampledAttentionImpl::DownsampledAttentionImpl(int64_t dim, int64_t num_heads)
    : num_heads(num_heads) {
  if (dim % num_heads != 0) {
    throw ConfigError("u-dit: width " + std::to_string(dim) + " is not divisible by model.num_heads " +
                      std::to_string(num_heads));
  }
  downsampler = register_module("downsampler", TokenDownsampler(dim));
  to_qkv = register_module("to_qkv", Linear(dim, 3 * dim));
  to_out = register_module("to_out", torch::nn::Conv2d(torch::nn::Conv2dOptions(dim, dim, 1)));
  logit_scale = register_parameter("logit_scale", at::full({num_heads, 1, 1}, std::log(10.0)));
}

void DownsampledAttentionImpl::declare_width_roles(WidthRoles roles) const {
  roles.layer("downsampler.layer", WidthRole::kVector, InitLaw::kXavier);  // depthwise
  roles.layer("to_qkv", WidthRole::kHidden, InitLaw::kXavier);
  roles.layer("to_out", WidthRole::kHidden, InitLaw::kXavier);
  roles.param("logit_scale", WidthRole::kVector, InitLaw::kConstant);  // per head
}

at::Tensor DownsampledAttentionImpl::forward(const at::Tensor& x) {
  const int64_t n = x.size(0), d = x.size(1), height = x.size(2), width = x.size(3);
  if (height % 2 != 0 || width != height) {
    throw ShapeError("u-dit attention needs a square map of even side, got " +
                     std::to_string(height) + "x" + std::to_string(width));
  }
  const int64_t side = height / 2, tokens = side * side, head_dim = d / num_heads;
  auto groups = polyphase_split(downsampler->forward(x));  // [n, 4, T, d]
  auto qkv = to_qkv->forward(groups).chunk(3, -1);
  auto heads = [&](const at::Tensor& t) {  // [n, 4, T, d] -> [n, 4, heads, T, hd]
    return t.reshape({n, 4, tokens, num_heads, head_dim}).transpose(2, 3);
  };
  auto angles = rope2d_angles(head_dim, side, x.options());
  auto q = apply_rope2d(heads(qkv[0]), angles), k = apply_rope2d(heads(qkv[1]), angles);
  auto v = heads(qkv[2]);
  // Cosine attention (Swin-V2): unit q and k, logits scaled by exp(min(logit_scale, ln 100)),
  // with the official code's 4.6052 for ln 100.
  // The per-head scale goes into q, so the groups can run as one batch of fused attention.
  auto unit = [](const at::Tensor& t) { return t / t.norm(2, {-1}, true).clamp_min(1e-12); };
  auto scale = at::clamp_max(logit_scale, 4.6052).exp();  // [heads, 1, 1]
  auto batch = [&](const at::Tensor& t) { return t.reshape({n * 4, num_heads, tokens, head_dim}); };
  auto scaled_q = (unit(q) * scale).to(v.scalar_type());  // the fp32 scale must not promote q
  auto out = compat::scaled_dot_product_attention(batch(scaled_q), batch(unit(k)), batch(v),
                                                  /*scale=*/1.0);
  out = out.reshape({n, 4, num_heads, tokens, head_dim})
            .transpose(2, 3)
            .reshape({n, 4, tokens, d});  // heads back to channels
  return probe("attn", to_out->forward(polyphase_merge(out, height, width)));
}

}  // namespace ditlab
