#include "models/dit/dit.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>

#include <cmath>
#include <sstream>

#include "src/common/error.h"
#include "models/layers/activation_checkpoint.h"
#include "models/mup/activation_probe.h"

namespace ditlab {

Conditioning parse_conditioning(const std::string& name) {
  if (name == "adaln_zero") return Conditioning::kAdaLNZero;
  if (name == "adaln") return Conditioning::kAdaLN;
  if (name == "cross_attention") return Conditioning::kCrossAttention;
  if (name == "in_context") return Conditioning::kInContext;
  throw ConfigError("model.conditioning '" + name +
                    "' is unknown; expected adaln_zero, adaln, cross_attention or in_context");
}

namespace {
constexpr double kNormEps = 1e-6;  // DiT's LayerNorms use 1e-6, not PyTorch's 1e-5

bool is_adaptive(Conditioning c) {
  return c == Conditioning::kAdaLNZero || c == Conditioning::kAdaLN;
}

// LayerNorm without affine parameters (DiT's norm1/norm2/norm_final under adaLN).
at::Tensor plain_norm(const at::Tensor& x) {
  return at::layer_norm(x, {x.size(-1)}, {}, {}, kNormEps);
}

torch::nn::LayerNorm affine_norm(int64_t dim) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(kNormEps));
}

// x * (1 + scale) + shift, with [N, D] modulation broadcast over tokens.
at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

torch::nn::Sequential modulation(int64_t dim, int64_t chunks) {
  return torch::nn::Sequential(torch::nn::SiLU(), Linear(dim, chunks * dim));
}
}  // namespace

DiTBlockImpl::DiTBlockImpl(int64_t hidden_size, int64_t num_heads, double mlp_ratio,
                           Conditioning conditioning, const MoeOptions& moe_options)
    : conditioning(conditioning) {
  if (!is_adaptive(conditioning)) norm1 = register_module("norm1", affine_norm(hidden_size));
  attn = register_module("attn", Attention(hidden_size, num_heads));
  if (conditioning == Conditioning::kCrossAttention) {
    norm_cross = register_module("norm_cross", affine_norm(hidden_size));
    cross_attn = register_module("cross_attn", CrossAttention(hidden_size, num_heads));
  }
  if (!is_adaptive(conditioning)) norm2 = register_module("norm2", affine_norm(hidden_size));
  if (moe_options.num_experts > 0) {
    moe = register_module("moe", SparseMoe(hidden_size, mlp_ratio, moe_options));
  } else {
    mlp = register_module("mlp", Mlp(hidden_size, static_cast<int64_t>(hidden_size * mlp_ratio)));
  }
  if (conditioning == Conditioning::kAdaLNZero) {
    adaLN_modulation = register_module("adaLN_modulation", modulation(hidden_size, 6));
  } else if (conditioning == Conditioning::kAdaLN) {
    adaLN_modulation = register_module("adaLN_modulation", modulation(hidden_size, 4));
  }
}

at::Tensor DiTBlockImpl::forward(const at::Tensor& x, const at::Tensor& cond) {
  return probe("block", residual_stream(x, cond));
}

at::Tensor DiTBlockImpl::residual_stream(const at::Tensor& x, const at::Tensor& cond) {
  switch (conditioning) {
    case Conditioning::kAdaLNZero: {
      // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp: each [N, D]
      auto m = adaLN_modulation->forward(cond).chunk(6, 1);
      auto h = x + m[2].unsqueeze(1) * attn->forward(modulate(plain_norm(x), m[0], m[1]));
      return h + m[5].unsqueeze(1) * feed_forward(modulate(plain_norm(h), m[3], m[4]));
    }
    case Conditioning::kAdaLN: {
      // The paper's adaLN: shift and scale regressed from c, no gates.
      auto m = adaLN_modulation->forward(cond).chunk(4, 1);
      auto h = x + attn->forward(modulate(plain_norm(x), m[0], m[1]));
      return h + feed_forward(modulate(plain_norm(h), m[2], m[3]));
    }
    case Conditioning::kCrossAttention: {
      auto h = x + attn->forward(norm1->forward(x));
      h = h + cross_attn->forward(norm_cross->forward(h), cond);
      return h + feed_forward(norm2->forward(h));
    }
    case Conditioning::kInContext: {
      auto h = x + attn->forward(norm1->forward(x));
      return h + feed_forward(norm2->forward(h));
    }
  }
  DITLAB_ASSERT(false, "unhandled conditioning");
  return x;
}

void DiTBlockImpl::declare_width_roles(WidthRoles roles) const {
  const auto norm = [&](const char* name) { roles.layer(name, WidthRole::kVector, InitLaw::kConstant); };
  if (!norm1.is_empty()) norm("norm1");
  if (!norm2.is_empty()) norm("norm2");
  attn->declare_width_roles(roles.scope("attn"));
  if (!cross_attn.is_empty()) {
    norm("norm_cross");
    cross_attn->declare_width_roles(roles.scope("cross_attn"));
  }
  if (!mlp.is_empty()) mlp->declare_width_roles(roles.scope("mlp"));
  if (!moe.is_empty()) moe->declare_width_roles(roles.scope("moe"));
  // Zero under adaLN-Zero, xavier under adaLN: the law only matters if it were not hidden.
  if (!adaLN_modulation.is_empty()) roles.layer("adaLN_modulation.1", WidthRole::kHidden, InitLaw::kXavier);
}

FinalLayerImpl::FinalLayerImpl(int64_t hidden_size, int64_t patch_size, int64_t out_channels,
                               bool adaptive)
    : adaptive(adaptive) {
  if (!adaptive) norm_final = register_module("norm_final", affine_norm(hidden_size));
  linear = register_module("linear",
                           Linear(hidden_size, patch_size * patch_size * out_channels));
  if (adaptive) adaLN_modulation = register_module("adaLN_modulation", modulation(hidden_size, 2));
}

at::Tensor FinalLayerImpl::forward(const at::Tensor& x, const at::Tensor& c) {
  if (!adaptive) return linear->forward(norm_final->forward(x));
  auto m = adaLN_modulation->forward(c).chunk(2, 1);  // shift, scale
  return linear->forward(modulate(plain_norm(x), m[0], m[1]));
}

void FinalLayerImpl::declare_width_roles(WidthRoles roles) const {
  if (!norm_final.is_empty()) roles.layer("norm_final", WidthRole::kVector, InitLaw::kConstant);
  if (!adaLN_modulation.is_empty()) roles.layer("adaLN_modulation.1", WidthRole::kHidden, InitLaw::kConstant);
  roles.layer("linear", WidthRole::kOutput, InitLaw::kConstant);  // zero-initialised
}

void check_dit_options(const DiTOptions& o) {
  auto positive = [](const char* key, int64_t v) {
    if (v < 1) throw ConfigError(std::string("model.") + key + " must be >= 1 (got " +
                                 std::to_string(v) + ")");
  };
  positive("input_size", o.input_size);
  positive("patch_size", o.patch_size);
  positive("in_channels", o.in_channels);
  positive("hidden_size", o.hidden_size);
  positive("depth", o.depth);
  positive("num_heads", o.num_heads);
  positive("num_classes", o.num_classes);
  if (o.checkpoint_blocks && o.moe.num_experts > 0) {
    // The load-balancing loss is read from each block after forward; a checkpointed block's
    // forward records no graph, so the router would lose that loss's gradient.
    throw ConfigError("model.checkpoint_blocks is not supported with experts (model.moe.num_experts "
                      "> 0): the routers' load-balancing loss needs the blocks' recorded forward");
  }
  if (o.input_size % o.patch_size != 0) {
    throw ConfigError("model.input_size " + std::to_string(o.input_size) +
                      " is not divisible by model.patch_size " + std::to_string(o.patch_size));
  }
  if (o.hidden_size % o.num_heads != 0) {
    throw ConfigError("model.hidden_size " + std::to_string(o.hidden_size) +
                      " is not divisible by model.num_heads " + std::to_string(o.num_heads) +
                      " (every head gets hidden_size / num_heads channels)");
  }
  // The 2-D sin-cos position embedding gives a quarter of the channels to each of sin and cos
  // of the row and of the column.
  if (o.hidden_size % 4 != 0) {
    throw ConfigError("model.hidden_size " + std::to_string(o.hidden_size) +
                      " is not a multiple of 4, which the 2-D sin-cos position embedding needs "
                      "(sin and cos of the row and of the column); use e.g. " +
                      std::to_string(o.hidden_size / 4 * 4 + 4));
  }
}

int64_t dit_tokens(const DiTOptions& o) {
  const int64_t grid = o.input_size / o.patch_size;
  return grid * grid + (o.conditioning == Conditioning::kInContext ? 2 : 0);
}

DiT::DiT(const DiTOptions& o) : options_(o) {
  check_dit_options(o);
  const int64_t grid = o.input_size / o.patch_size;
  const int64_t out_channels = o.learn_sigma ? 2 * o.in_channels : o.in_channels;

  x_embedder = register_module("x_embedder", PatchEmbed(o.in_channels, o.hidden_size, o.patch_size));
  t_embedder = register_module("t_embedder", TimestepEmbedder(o.hidden_size));
  y_embedder = register_module("y_embedder",
                               LabelEmbedder(o.num_classes, o.hidden_size, o.with_null_class));
  pos_embed = register_parameter("pos_embed",
                                 sincos_pos_embed_2d(o.hidden_size, grid).unsqueeze(0),
                                 /*requires_grad=*/false);
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.depth; ++i) {
    blocks->push_back(DiTBlock(o.hidden_size, o.num_heads, o.mlp_ratio, o.conditioning, o.moe));
  }
  final_layer = register_module(
      "final_layer",
      FinalLayer(o.hidden_size, o.patch_size, out_channels, is_adaptive(o.conditioning)));
  initialize_weights();
}

void DiT::initialize_weights() {
  namespace init = torch::nn::init;
  torch::NoGradGuard no_grad;
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* linear = module->as<Linear>()) {
      init::xavier_uniform_(linear->weight);  // the MoE experts too; the router keeps kaiming
      if (linear->bias.defined()) init::zeros_(linear->bias);
    }
  }
  // The patch embedding is initialised like a Linear over its flattened (C*p*p) inputs.
  auto w = x_embedder->proj->weight;
  init::xavier_uniform_(w.view({w.size(0), -1}));
  init::zeros_(x_embedder->proj->bias);
  init::normal_(y_embedder->embedding_table->weight, 0.0, 0.02);
  init::normal_(t_embedder->mlp[0]->as<Linear>()->weight, 0.0, 0.02);
  init::normal_(t_embedder->mlp[2]->as<Linear>()->weight, 0.0, 0.02);
  // adaLN-Zero: every block starts as the identity, and the network outputs exactly zero.
  if (options_.conditioning == Conditioning::kAdaLNZero) {
    for (auto& block : *blocks) {
      auto* linear = block->as<DiTBlockImpl>()->adaLN_modulation[1]->as<Linear>();
      init::zeros_(linear->weight);
      init::zeros_(linear->bias);
    }
  }
  if (final_layer->adaptive) {
    auto* linear = final_layer->adaLN_modulation[1]->as<Linear>();
    init::zeros_(linear->weight);
    init::zeros_(linear->bias);
  }
  init::zeros_(final_layer->linear->weight);
  init::zeros_(final_layer->linear->bias);
}

void DiT::declare_width_roles(WidthRoles& roles) const {
  x_embedder->declare_width_roles(roles.scope("x_embedder"), InitLaw::kXavierFlat);
  t_embedder->declare_width_roles(roles.scope("t_embedder"));
  y_embedder->declare_width_roles(roles.scope("y_embedder"));
  // pos_embed is a fixed sin-cos table (not trained).
  for (size_t i = 0; i < blocks->size(); ++i) {
    blocks->ptr(i)->as<DiTBlockImpl>()->declare_width_roles(roles.scope("blocks." + std::to_string(i)));
  }
  final_layer->declare_width_roles(roles.scope("final_layer"));
}

DiT::Embedded DiT::embed(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) {
  const auto& o = options_;
  check_input("DiT", x, t, y);
  auto tokens = x_embedder->forward(x) + pos_embed;  // [N, T, D]
  auto t_emb = t_embedder->forward(t);               // [N, D]
  auto y_emb = y_embedder->forward(y);               // [N, D]
  at::Tensor cond;
  if (is_adaptive(o.conditioning)) {
    cond = t_emb + y_emb;
  } else if (o.conditioning == Conditioning::kCrossAttention) {
    cond = at::stack({t_emb, y_emb}, 1);  // [N, 2, D]
  } else {
    tokens = at::cat({t_emb.unsqueeze(1), y_emb.unsqueeze(1), tokens}, 1);  // [N, 2 + T, D]
  }
  return {tokens, cond};
}

at::Tensor DiT::run_blocks(at::Tensor tokens, const at::Tensor& cond) {
  for (int64_t i = 0; i < static_cast<int64_t>(blocks->size()); ++i) tokens = run_block(i, tokens, cond);
  return tokens;
}

at::Tensor DiT::run_block(int64_t i, const at::Tensor& x, const at::Tensor& cond) {
  auto* block = blocks->ptr(i)->as<DiTBlockImpl>();
  if (options_.checkpoint_blocks && is_training()) {
    return checkpointed([block](const std::vector<at::Tensor>& in) { return block->forward(in[0], in[1]); },
                        {x, cond});
  }
  return block->forward(x, cond);
}

at::Tensor DiT::head(const at::Tensor& tokens, const at::Tensor& cond) {
  auto image_tokens = options_.conditioning == Conditioning::kInContext
                          ? tokens.narrow(1, 2, tokens.size(1) - 2)
                          : tokens;
  return unpatchify(final_layer->forward(image_tokens, cond), options_.patch_size,
                    shape().out_channels);
}

BackboneOutput DiT::forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) {
  Embedded e = embed(x, t, y);
  BackboneOutput out{probe("output", head(run_blocks(probe("embed", e.tokens), e.cond), e.cond)), {}, {}};
  if (options_.moe.num_experts > 0) {
    // The load-balancing losses of all layers, and each layer's tokens per expert.
    for (size_t i = 0; i < blocks->size(); ++i) {
      const MoeRouting& routing = blocks[i]->as<DiTBlockImpl>()->moe->last_routing();
      if (routing.aux_loss.defined()) {
        out.aux_loss = out.aux_loss.defined() ? out.aux_loss + routing.aux_loss : routing.aux_loss;
      }
      out.metrics["moe_tokens_per_expert." + std::to_string(i)] = routing.tokens_per_expert;
    }
  }
  return out;
}

int64_t dit_parameter_count(const DiTOptions& o, bool active_only) {
  const int64_t D = o.hidden_size, p = o.patch_size, grid = o.input_size / p, C = o.in_channels;
  const int64_t out = o.learn_sigma ? 2 * C : C, hidden = static_cast<int64_t>(D * o.mlp_ratio);
  const bool adaptive = is_adaptive(o.conditioning);
  int64_t block = (3 * D * D + 3 * D) + (D * D + D);  // qkv, proj
  if (o.moe.num_experts > 0) {
    const int64_t experts = active_only ? o.moe.experts_per_token : o.moe.num_experts;
    block += o.moe.num_experts * D + experts * 3 * D * hidden + 3 * D * 2 * D;
  } else {
    block += (D * hidden + hidden) + (hidden * D + D);
  }
  if (o.conditioning == Conditioning::kAdaLNZero) block += 6 * D * D + 6 * D;
  if (o.conditioning == Conditioning::kAdaLN) block += 4 * D * D + 4 * D;
  if (!adaptive) block += 2 * 2 * D;  // norm1, norm2 (affine)
  if (o.conditioning == Conditioning::kCrossAttention) {
    block += 2 * D + (D * D + D) + (2 * D * D + 2 * D) + (D * D + D);  // norm, q, kv, proj
  }
  const int64_t embedders = (C * p * p * D + D) + (256 * D + D + D * D + D) +
                            (o.num_classes + (o.with_null_class ? 1 : 0)) * D;
  const int64_t final_layer = (adaptive ? 2 * D * D + 2 * D : 2 * D) + (D * p * p * out + p * p * out);
  return embedders + grid * grid * D + o.depth * block + final_layer;
}

int64_t DiT::forward_macs() const { return dit_forward_macs(options_); }

int64_t dit_forward_macs(const DiTOptions& o) {
  const int64_t D = o.hidden_size, p = o.patch_size, grid = o.input_size / p;
  const int64_t image_tokens = grid * grid, out = o.learn_sigma ? 2 * o.in_channels : o.in_channels;
  const int64_t hidden = static_cast<int64_t>(D * o.mlp_ratio);
  const int64_t T = dit_tokens(o);  // in-context: the image tokens + 2
  // Per block: qkv, q k^T, attention x v, projection, MLP (MoE: router, k experts, shared).
  const int64_t mlp = o.moe.num_experts > 0
                          ? T * (D * o.moe.num_experts + o.moe.experts_per_token * 3 * D * hidden +
                                 3 * D * 2 * D)
                          : 2 * T * D * hidden;
  int64_t block = T * D * 3 * D + 2 * T * T * D + T * D * D + mlp;
  if (o.conditioning == Conditioning::kAdaLNZero) block += 6 * D * D;  // per sample
  if (o.conditioning == Conditioning::kAdaLN) block += 4 * D * D;
  if (o.conditioning == Conditioning::kCrossAttention) {
    block += T * D * D + 2 * 2 * D * D + 2 * T * 2 * D + T * D * D;  // q, kv of 2, products, proj
  }
  const int64_t embed = image_tokens * D * o.in_channels * p * p + (256 * D + D * D);
  const int64_t final_layer = (is_adaptive(o.conditioning) ? 2 * D * D : 0) + image_tokens * D * p * p * out;
  return o.depth * block + embed + final_layer;
}

BackboneShape DiT::shape() const {
  const auto& o = options_;
  return {o.input_size, o.in_channels, o.learn_sigma ? 2 * o.in_channels : o.in_channels,
          o.num_classes, o.with_null_class};
}

}  // namespace ditlab
