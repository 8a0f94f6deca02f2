// DiT: "Scalable Diffusion Models with Transformers" (Peebles & Xie), mirroring
// facebookresearch/DiT models.py. Registered names are the official state-dict keys, so official
// checkpoints load without remapping.
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <string>

#include "models/backbone.h"
#include "models/dit_moe/sparse_moe.h"
#include "models/layers/attention.h"
#include "models/layers/embeddings.h"
#include "models/layers/linear.h"

namespace ditlab {

// How (t, y) reach the blocks: the four designs of the DiT paper's Figure 3 ablation.
enum class Conditioning { kAdaLNZero, kAdaLN, kCrossAttention, kInContext };
Conditioning parse_conditioning(const std::string& name);

struct DiTOptions {
  int64_t input_size = 32;
  int64_t patch_size = 2;
  int64_t in_channels = 4;
  int64_t hidden_size = 1152;
  int64_t depth = 28;
  int64_t num_heads = 16;
  double mlp_ratio = 4.0;
  int64_t num_classes = 1000;
  bool learn_sigma = true;
  bool with_null_class = true;  // the extra embedding row for guidance (label dropout > 0)
  Conditioning conditioning = Conditioning::kAdaLNZero;
  MoeOptions moe;  // num_experts > 0: DiT-MoE (every block's MLP is a sparse MoE layer)
  bool checkpoint_blocks = false;  // recompute each block in backward (activation checkpointing)
};

// One transformer block under any conditioning variant. adaLN-Zero is the official DiTBlock.
class DiTBlockImpl : public torch::nn::Module {
 public:
  DiTBlockImpl(int64_t hidden_size, int64_t num_heads, double mlp_ratio, Conditioning conditioning,
               const MoeOptions& moe = {});
  // x [N, T, D]; c [N, D] (adaLN variants) or context [N, 2, D] (cross-attention); in-context
  // blocks ignore `cond` (the condition tokens are part of x).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cond);
  void declare_width_roles(WidthRoles roles) const;

  Conditioning conditioning;
  Attention attn{nullptr};
  Mlp mlp{nullptr};                                         // dense blocks
  SparseMoe moe{nullptr};                                   // DiT-MoE blocks (key "moe")
  torch::nn::Sequential adaLN_modulation{nullptr};          // adaLN variants
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};      // affine; non-adaLN variants
  torch::nn::LayerNorm norm_cross{nullptr};                 // cross-attention
  CrossAttention cross_attn{nullptr};                       // cross-attention

 private:
  at::Tensor residual_stream(const at::Tensor& x, const at::Tensor& cond);  // forward's work
  at::Tensor feed_forward(const at::Tensor& x) {
    return mlp.is_empty() ? moe->forward(x) : mlp->forward(x);
  }
};
TORCH_MODULE(DiTBlock);

// DiT's FinalLayer: norm, (adaptive shift and scale), Linear to p*p*C_out per token.
class FinalLayerImpl : public torch::nn::Module {
 public:
  FinalLayerImpl(int64_t hidden_size, int64_t patch_size, int64_t out_channels, bool adaptive);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& c);  // [N,T,D] -> [N,T,p*p*C_out]
  void declare_width_roles(WidthRoles roles) const;  // `linear` is the µP readout

  bool adaptive;
  torch::nn::Sequential adaLN_modulation{nullptr};
  torch::nn::LayerNorm norm_final{nullptr};  // affine, only when not adaptive
  Linear linear{nullptr};
};
TORCH_MODULE(FinalLayer);

// The options the DiT constructor refuses (ConfigError naming the model.* key and its value):
// sizes below 1, an input not divisible by the patch, a width not divisible by the heads or not
// a multiple of 4 (the sin-cos position embedding), checkpointed blocks with experts. dit flops
// checks the same before pricing a model.
void check_dit_options(const DiTOptions& options);
// The length of the token sequence the blocks see: (input_size / patch_size)^2, plus the time and
// class tokens under in-context conditioning.
int64_t dit_tokens(const DiTOptions& options);
// Backbone::forward_macs() of the DiT these options describe, without building it.
int64_t dit_forward_macs(const DiTOptions& options);
// Its parameter count (pos_embed included), without building it; `active_only` counts only the
// experts a token uses (k routed + the shared one), as the DiT-MoE paper's "activated".
int64_t dit_parameter_count(const DiTOptions& options, bool active_only = false);

class DiT : public Backbone {
 public:
  explicit DiT(const DiTOptions& options);

  BackboneOutput forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) override;
  BackboneShape shape() const override;
  int64_t forward_macs() const override;
  void declare_width_roles(WidthRoles& roles) const override;
  const DiTOptions& options() const { return options_; }

  // The official initialisation (DiT.initialize_weights).
  void initialize_weights();

  // Tokens and condition after the embedders: what the blocks consume.
  struct Embedded {
    at::Tensor tokens;  // [N, T, D] (in-context: [N, 2 + T, D])
    at::Tensor cond;    // [N, D] (adaLN variants), [N, 2, D] (cross-attention), or undefined
  };
  Embedded embed(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y);
  // The block stack; backbones built on DiT (Skip-DiT) rewire it.
  virtual at::Tensor run_blocks(at::Tensor tokens, const at::Tensor& cond);
  // The final layer and unpatchify: [N, T(+2), D] -> [N, C_out, H, W].
  at::Tensor head(const at::Tensor& tokens, const at::Tensor& cond);

  PatchEmbed x_embedder{nullptr};
  TimestepEmbedder t_embedder{nullptr};
  LabelEmbedder y_embedder{nullptr};
  at::Tensor pos_embed;  // [1, T, D], fixed (requires_grad false) but in the state dict
  torch::nn::ModuleList blocks{nullptr};
  FinalLayer final_layer{nullptr};

 protected:
  // Block i on x; in training with options().checkpoint_blocks, without stored activations.
  at::Tensor run_block(int64_t i, const at::Tensor& x, const at::Tensor& cond);

 private:
  DiTOptions options_;
};

}  // namespace ditlab
