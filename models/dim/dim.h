// DiM, "Diffusion Mamba" (tyshiwo1/DiM-DiffusionMamba, Mamba2DModel; ../shared/spec/dit-family.md
// section 9): a stack of Mamba mixers over the patch tokens instead of attention, linear in the
// number of tokens. Its 2-D adaptations:
//   sequence   [time token, class token, 3 "dec_split" pads, the (g+3) x (g+3) padded grid]; the
//              grid is the g x g patches with 3 learnable pad columns at the right of every row
//              and 3 pad rows at the bottom (one learnable set of 3 tokens, "lateral");
//   smoothers  depthwise 3x3 convolutions over the g x g tokens before padding and after
//              unpadding;
//   scans      block i reads the grid in one of four orders (row-major, row-major reversed,
//              column-major, column-major reversed), cycled over the layers (scan_order_of);
//   adaLN-single one conditioning MLP (SiLU -> Linear(D, 3D)) shared by all blocks, plus a
//              learnable (3, D) table per block: shift, scale and a gate applied as (1 + gate);
//   residual   Mamba's pre-norm scheme: an fp32 residual stream r, h_in = RMSNorm(r + h);
//   U-skips    U-ViT long skips: blocks 1..n push their output, the last n blocks merge one
//              at their input (two DxD linears for D > 512, Linear(2D -> D) otherwise).
// Every token-wise operation commutes with the scan permutations, so the stream stays in
// row-major order and only the mixer's input and output are permuted (the official code chains
// the permutations from layer to layer instead; the result is the same).
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>

#include <vector>

#include "models/backbone.h"
#include "models/dim/mamba_mixer.h"
#include "models/layers/embeddings.h"
#include "models/layers/linear.h"

namespace ditlab {

struct DiMOptions {
  int64_t input_size = 32;
  int64_t patch_size = 2;
  int64_t in_channels = 4;
  int64_t hidden_size = 1024;
  int64_t depth = 49;
  int64_t num_classes = 1000;
  bool learn_sigma = false;  // DiM predicts the noise only
  bool with_null_class = true;
  int64_t d_state = 16;
  int64_t d_conv = 3;  // also the number of pad tokens ("pad length = d_conv")
  int64_t expand = 2;
  bool checkpoint_blocks = false;  // recompute each block in backward (activation checkpointing)
  // The long skips merge with two DxD linears when this width is above 512 (the official
  // choice), else with one Linear(2D -> D). 0: hidden_size; µP passes its base width, so that
  // the base model and the wide one have the same parameters.
  int64_t skip_layout_width = 0;
  bool wide_skips() const { return (skip_layout_width > 0 ? skip_layout_width : hidden_size) > 512; }
};

// The scan order of block `block` of `depth` (0 row-major, -2 row-major reversed, 1 column-major,
// -1 column-major reversed): the cycle 0, -2, 1, -1 from block 0 to the middle block, the same
// cycle backwards after it, and the last block back to 0.
int scan_order_of(int64_t block, int64_t depth);

// For a grid of `rows` x `cols` tokens stored row-major: the row-major index of the token at
// each position of scan order `order` ([rows * cols] int64). Reading a row-major sequence with
// index_select(this) gives the scan sequence; index_select(inverse) maps it back.
at::Tensor scan_permutation(int order, int64_t rows, int64_t cols);

// One DiM layer: RMSNorm of the residual stream, adaLN-single modulation, gated Mamba mixer.
class DiMBlockImpl : public torch::nn::Module {
 public:
  DiMBlockImpl(int64_t dim, const MambaOptions& mamba, int64_t depth);
  // r: fp32 residual stream [N, L, D]; c3: the shared modulation [N, 3, D]; order/inverse: the
  // token permutation of this block's scan. Returns the mixer's contribution h [N, L, D].
  at::Tensor forward(const at::Tensor& r, const at::Tensor& c3, const at::Tensor& order,
                     const at::Tensor& inverse);
  void declare_width_roles(WidthRoles roles) const;

  at::Tensor norm_weight, scale_shift_table;
  MambaMixer mixer{nullptr};
};
TORCH_MODULE(DiMBlock);

class DiM : public Backbone {
 public:
  explicit DiM(const DiMOptions& options);

  BackboneOutput forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) override;
  BackboneShape shape() const override;
  int64_t forward_macs() const override;
  void declare_width_roles(WidthRoles& roles) const override;
  const DiMOptions& options() const { return options_; }

  int64_t grid() const { return options_.input_size / options_.patch_size; }
  int64_t sequence_length() const;  // 2 extra + pads + padded grid

  // The token sequence before the blocks: [N, L, D] (exposed for the layout tests).
  at::Tensor embed(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y);

  PatchEmbed x_embedder{nullptr};
  torch::nn::Conv2d first_smoother{nullptr}, last_smoother{nullptr};
  torch::nn::Embedding label_emb{nullptr};       // the class token
  TimestepEmbedder t_embedder{nullptr};          // adaLN-single: time ...
  torch::nn::Embedding adaln_label_emb{nullptr};  // ... plus class
  Linear adaln_single{nullptr};                   // SiLU -> Linear(D, 3D)
  at::Tensor pos_embed, pad_token, dec_split_pad;
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::ModuleList skip_linears{nullptr};  // per merging block: Linear(2D, D) or two DxD
  at::Tensor norm_f_weight;
  Linear final_modulation{nullptr}, final_linear{nullptr};

 private:
  at::Tensor run_block(int64_t i, const at::Tensor& r, const at::Tensor& c3);

  DiMOptions options_;
  int64_t skips_ = 0;                  // blocks 1..skips_ push, the last skips_ blocks merge
  std::vector<at::Tensor> orders_, inverses_;  // per block, over the whole sequence
};

// Backbone::forward_macs() and the parameter count of the DiM these options describe.
int64_t dim_forward_macs(const DiMOptions& options);
int64_t dim_parameter_count(const DiMOptions& options);

}  // namespace ditlab
