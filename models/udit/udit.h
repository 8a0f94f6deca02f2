// U-DiT: "U-DiTs: Downsample Tokens in U-Shaped Diffusion Transformers" (Tian et al.), mirroring
// YuchuanTian/U-DiT udit_models.py (configs U_DiT_S/B/L: ffn 'rep', attention 'v2', RoPE-2D,
// dwconv5 downsampler with shortcut). Registered names are the official state-dict keys.
//
// No patchify: a 3x3 conv embeds every pixel, and the model works on [N, C, H, W] maps:
//   encoder_level_1 (C, HxW) -> down1_2 -> encoder_level_2 (2C, H/2) -> down2_3 ->
//   latent (4C, H/4) -> up3_2, concat enc-2, 1x1 reduce -> decoder_level_2 (2C, H/2) ->
//   up2_1, concat enc-1, 1x1 reduce -> decoder_level_1 (2C, H) -> output 3x3 conv -> final layer.
// Each level has its own timestep and label embedders: c1 (C) for encoder 1, c3 (4C) for the
// latent, c2 (2C) for encoder 2, both decoders and the final layer.
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>

#include <vector>

#include "models/backbone.h"
#include "models/layers/embeddings.h"
#include "models/mup/mup_modules.h"
#include "models/udit/downsampled_attention.h"
#include "models/udit/rep_feed_forward.h"

namespace ditlab {

struct UDiTOptions {
  int64_t input_size = 32;  // divisible by 8 (two downsamplings, then the polyphase split)
  int64_t in_channels = 4;
  int64_t hidden_size = 96;  // C
  int64_t num_heads = 4;     // at every level, so head_dim doubles per level
  std::vector<int64_t> level_depths = {2, 5, 8, 5, 2};
  double mlp_ratio = 2.0;
  int64_t num_classes = 1000;
  bool learn_sigma = true;
  bool with_null_class = true;
  bool checkpoint_blocks = false;  // recompute each block in backward (activation checkpointing)
};

// Two attention + FFN sub-layers, each with its own adaLN-Zero modulation (DiT's 6-vector order).
class UDiTBlockImpl : public torch::nn::Module {
 public:
  UDiTBlockImpl(int64_t dim, int64_t num_heads, double mlp_ratio);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& c);  // x [N, d, H, W], c [N, d]
  void declare_width_roles(WidthRoles roles) const;

  DownsampledAttention attn1{nullptr}, attn2{nullptr};
  RepFeedForward mlp1{nullptr}, mlp2{nullptr};
  torch::nn::Sequential adaLN_modulation1{nullptr}, adaLN_modulation2{nullptr};
};
TORCH_MODULE(UDiTBlock);

// LayerNorm2d (no affine) with adaptive shift and scale, then a 3x3 conv to the output channels
// (the µP readout: its input is scaled by the readout multiplier).
class UDiTFinalLayerImpl : public torch::nn::Module, public MupReadout {
 public:
  UDiTFinalLayerImpl(int64_t dim, int64_t out_channels);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& c);
  void declare_width_roles(WidthRoles roles) const;

  torch::nn::Conv2d out_proj{nullptr};
  torch::nn::Sequential adaLN_modulation{nullptr};
};
TORCH_MODULE(UDiTFinalLayer);

// The official OverlapPatchEmbed: a 3x3 conv (key "proj"), stride 1, on every pixel.
class OverlapPatchEmbedImpl : public torch::nn::Module {
 public:
  OverlapPatchEmbedImpl(int64_t in_channels, int64_t dim);
  at::Tensor forward(const at::Tensor& x) { return proj->forward(x); }
  torch::nn::Conv2d proj{nullptr};
};
TORCH_MODULE(OverlapPatchEmbed);

// The official Downsample / Upsample (key "body"): a 3x3 conv without bias to n/2 (down) or 2n
// (up) channels, then PixelUnshuffle(2) (-> 2n channels at half size) or PixelShuffle(2)
// (-> n/2 channels at double size).
class ResampleImpl : public torch::nn::Module {
 public:
  ResampleImpl(int64_t channels, bool down);
  at::Tensor forward(const at::Tensor& x) { return body->forward(x); }
  torch::nn::Sequential body{nullptr};
};
TORCH_MODULE(Resample);

class UDiT : public Backbone {
 public:
  explicit UDiT(const UDiTOptions& options);

  BackboneOutput forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) override;
  BackboneShape shape() const override;
  int64_t forward_macs() const override;
  int64_t training_forward_macs() const override;
  void declare_width_roles(WidthRoles& roles) const override;
  const UDiTOptions& options() const { return options_; }

  void initialize_weights();

  // Parameters as the paper counts them: with every FFN in its folded inference form.
  int64_t inference_parameter_count() const;

  std::vector<UDiTBlock> all_blocks() const;  // every level, in forward order

  OverlapPatchEmbed x_embedder{nullptr};
  TimestepEmbedder t_embedder_1{nullptr}, t_embedder_2{nullptr}, t_embedder_3{nullptr};
  LabelEmbedder y_embedder_1{nullptr}, y_embedder_2{nullptr}, y_embedder_3{nullptr};
  torch::nn::ModuleList encoder_level_1{nullptr}, encoder_level_2{nullptr}, latent{nullptr},
      decoder_level_2{nullptr}, decoder_level_1{nullptr};
  Resample down1_2{nullptr}, down2_3{nullptr}, up3_2{nullptr}, up2_1{nullptr};
  torch::nn::Conv2d reduce_chan_level2{nullptr}, reduce_chan_level1{nullptr}, output{nullptr};
  UDiTFinalLayer final_layer{nullptr};

 private:
  UDiTOptions options_;
};

// Backbone::forward_macs() of the U-DiT these options describe, without building it; with
// `training_form`, training_forward_macs() (the FFNs as trained: two 1x1 convs in, three
// depthwise branches, two 1x1 convs out).
int64_t udit_forward_macs(const UDiTOptions& options, bool training_form = false);
// Its parameter count without building it, with the FFNs folded (the paper's count) or not.
int64_t udit_parameter_count(const UDiTOptions& options, bool inference_form);

// [N, d, H, W] LayerNorm over channels at every pixel, no affine, eps 1e-6 (LayerNorm2d).
at::Tensor layer_norm_2d(const at::Tensor& x);

}  // namespace ditlab
