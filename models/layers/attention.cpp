#include "models/layers/attention.h"

#include <ATen/ATen.h>

#include <cmath>

#include "src/common/compat.h"
#include "models/mup/activation_probe.h"
#include "src/common/error.h"

namespace ditlab {

namespace {
// [N, T, D] -> [N, H, T, D/H]
at::Tensor split_heads(const at::Tensor& x, int64_t heads) {
  return x.view({x.size(0), x.size(1), heads, x.size(2) / heads}).transpose(1, 2);
}
// [N, H, T, D/H] -> [N, T, D]
at::Tensor merge_heads(const at::Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}
void check_heads(int64_t dim, int64_t heads) {
  if (heads < 1 || dim % heads != 0) {
    throw ShapeError("hidden_size " + std::to_string(dim) + " is not divisible by num_heads " +
                     std::to_string(heads));
  }
}
}  // namespace

AttentionImpl::AttentionImpl(int64_t dim, int64_t num_heads) : num_heads(num_heads) {
  check_heads(dim, num_heads);
  qkv = register_module("qkv", Linear(dim, 3 * dim));
  proj = register_module("proj", Linear(dim, dim));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x) {
  const int64_t n = x.size(0), t = x.size(1), d = x.size(2), head_dim = d / num_heads;
  // [N, T, 3D] -> [N, T, 3, H, Dh] -> [3, N, H, T, Dh]
  auto qkv_heads = qkv->forward(x).view({n, t, 3, num_heads, head_dim}).permute({2, 0, 3, 1, 4});
  const double scale = logit_multiplier / std::sqrt(static_cast<double>(head_dim));
  if (ActivationProbe::active()) {  // the logits µP's 1/head_dim rule keeps in size
    ActivationProbe::record("attn_logits", at::matmul(qkv_heads[0], qkv_heads[1].transpose(-2, -1)) * scale);
  }
  auto out = compat::scaled_dot_product_attention(qkv_heads[0], qkv_heads[1], qkv_heads[2], scale);
  return probe("attn", proj->forward(merge_heads(out)));
}

void AttentionImpl::declare_width_roles(WidthRoles roles) const {
  roles.layer("qkv", WidthRole::kHidden, InitLaw::kXavier);
  roles.layer("proj", WidthRole::kHidden, InitLaw::kXavier);
}

CrossAttentionImpl::CrossAttentionImpl(int64_t dim, int64_t num_heads) : num_heads(num_heads) {
  check_heads(dim, num_heads);
  q = register_module("q", Linear(dim, dim));
  kv = register_module("kv", Linear(dim, 2 * dim));
  proj = register_module("proj", Linear(dim, dim));
}

at::Tensor CrossAttentionImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  const int64_t head_dim = x.size(2) / num_heads;
  auto kv_parts = kv->forward(context).chunk(2, -1);  // [N, S, 2D] -> 2 x [N, S, D]
  auto out = compat::scaled_dot_product_attention(
      split_heads(q->forward(x), num_heads), split_heads(kv_parts[0], num_heads),
      split_heads(kv_parts[1], num_heads), logit_multiplier / std::sqrt(static_cast<double>(head_dim)));
  return probe("cross_attn", proj->forward(merge_heads(out)));
}

void CrossAttentionImpl::declare_width_roles(WidthRoles roles) const {
  for (const char* name : {"q", "kv", "proj"}) roles.layer(name, WidthRole::kHidden, InitLaw::kXavier);
}

MlpImpl::MlpImpl(int64_t dim, int64_t hidden_dim) {
  fc1 = register_module("fc1", Linear(dim, hidden_dim));
  fc2 = register_module("fc2", Linear(hidden_dim, dim));
}

at::Tensor MlpImpl::forward(const at::Tensor& x) {
  return probe("mlp", fc2->forward(at::gelu(fc1->forward(x), "tanh")));
}

void MlpImpl::declare_width_roles(WidthRoles roles) const {
  roles.layer("fc1", WidthRole::kHidden, InitLaw::kXavier);
  roles.layer("fc2", WidthRole::kHidden, InitLaw::kXavier);
}

}  // namespace ditlab
