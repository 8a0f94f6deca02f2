#include "models/udit/udit.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pixelshuffle.h>

#include <sstream>

#include "models/layers/activation_checkpoint.h"
#include "models/mup/activation_probe.h"
#include "src/common/error.h"

namespace ditlab {
namespace {
constexpr double kNormEps = 1e-6;

// x * (1 + scale) + shift with [N, d] modulation broadcast over the pixels of [N, d, H, W].
at::Tensor modulate_2d(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return x * (1 + scale.unsqueeze(-1).unsqueeze(-1)) + shift.unsqueeze(-1).unsqueeze(-1);
}

at::Tensor per_pixel(const at::Tensor& gate) { return gate.unsqueeze(-1).unsqueeze(-1); }

torch::nn::Sequential modulation(int64_t dim, int64_t chunks) {
  return torch::nn::Sequential(torch::nn::SiLU(), Linear(dim, chunks * dim));
}

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, bool bias = true) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel).padding(kernel / 2).bias(bias));
}
}  // namespace

at::Tensor layer_norm_2d(const at::Tensor& x) {
  auto channels_last = x.permute({0, 2, 3, 1});
  return at::layer_norm(channels_last, {x.size(1)}, {}, {}, kNormEps).permute({0, 3, 1, 2});
}

UDiTBlockImpl::UDiTBlockImpl(int64_t dim, int64_t num_heads, double mlp_ratio) {
  attn1 = register_module("attn1", DownsampledAttention(dim, num_heads));
  mlp1 = register_module("mlp1", RepFeedForward(dim, mlp_ratio));
  adaLN_modulation1 = register_module("adaLN_modulation1", modulation(dim, 6));
  attn2 = register_module("attn2", DownsampledAttention(dim, num_heads));
  mlp2 = register_module("mlp2", RepFeedForward(dim, mlp_ratio));
  adaLN_modulation2 = register_module("adaLN_modulation2", modulation(dim, 6));
}

at::Tensor UDiTBlockImpl::forward(const at::Tensor& x, const at::Tensor& c) {
  // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
  auto m = adaLN_modulation1->forward(c).chunk(6, 1);
  auto h = x + per_pixel(m[2]) * attn1->forward(modulate_2d(layer_norm_2d(x), m[0], m[1]));
  h = h + per_pixel(m[5]) * mlp1->forward(modulate_2d(layer_norm_2d(h), m[3], m[4]));
  m = adaLN_modulation2->forward(c).chunk(6, 1);
  h = h + per_pixel(m[2]) * attn2->forward(modulate_2d(layer_norm_2d(h), m[0], m[1]));
  return probe("block", h + per_pixel(m[5]) * mlp2->forward(modulate_2d(layer_norm_2d(h), m[3], m[4])));
}

UDiTFinalLayerImpl::UDiTFinalLayerImpl(int64_t dim, int64_t out_channels) {
  out_proj = register_module("out_proj", conv(dim, out_channels, 3));
  adaLN_modulation = register_module("adaLN_modulation", modulation(dim, 2));
}

at::Tensor UDiTFinalLayerImpl::forward(const at::Tensor& x, const at::Tensor& c) {
  auto m = adaLN_modulation->forward(c).chunk(2, 1);  // shift, scale
  auto h = modulate_2d(layer_norm_2d(x), m[0], m[1]);
  return out_proj->forward(readout_multiplier == 1.0 ? h : h * readout_multiplier);
}

void UDiTFinalLayerImpl::declare_width_roles(WidthRoles roles) const {
  roles.layer("out_proj", WidthRole::kOutput, InitLaw::kConstant);  // zero-initialised
  roles.layer("adaLN_modulation.1", WidthRole::kHidden, InitLaw::kConstant);
}

void UDiTBlockImpl::declare_width_roles(WidthRoles roles) const {
  attn1->declare_width_roles(roles.scope("attn1"));
  attn2->declare_width_roles(roles.scope("attn2"));
  mlp1->declare_width_roles(roles.scope("mlp1"));
  mlp2->declare_width_roles(roles.scope("mlp2"));
  roles.layer("adaLN_modulation1.1", WidthRole::kHidden, InitLaw::kConstant);
  roles.layer("adaLN_modulation2.1", WidthRole::kHidden, InitLaw::kConstant);
}

OverlapPatchEmbedImpl::OverlapPatchEmbedImpl(int64_t in_channels, int64_t dim) {
  proj = register_module("proj", conv(in_channels, dim, 3));
}

ResampleImpl::ResampleImpl(int64_t channels, bool down) {
  if (down) {
    body = register_module("body", torch::nn::Sequential(
                                       conv(channels, channels / 2, 3, /*bias=*/false),
                                       torch::nn::PixelUnshuffle(torch::nn::PixelUnshuffleOptions(2))));
  } else {
    body = register_module("body", torch::nn::Sequential(
                                       conv(channels, channels * 2, 3, /*bias=*/false),
                                       torch::nn::PixelShuffle(torch::nn::PixelShuffleOptions(2))));
  }
}

UDiT::UDiT(const UDiTOptions& o) : options_(o) {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw ConfigError(what);
  };
  require(o.input_size >= 8 && o.input_size % 8 == 0,
          "u-dit: model.input_size " + std::to_string(o.input_size) +
              " must be a positive multiple of 8 (two downsamplings, then a stride-2 token split)");
  require(o.hidden_size >= 2 && o.hidden_size % 2 == 0,
          "u-dit: model.hidden_size " + std::to_string(o.hidden_size) + " must be even");
  require(o.num_heads >= 1, "u-dit: model.num_heads must be >= 1");
  require(o.hidden_size % o.num_heads == 0 && (o.hidden_size / o.num_heads) % 4 == 0,
          "u-dit: model.hidden_size / model.num_heads must be a multiple of 4 (2-D RoPE), got " +
              std::to_string(o.hidden_size) + " / " + std::to_string(o.num_heads));
  require(o.level_depths.size() == 5, "u-dit: model.level_depths must have 5 entries");
  require(o.num_classes >= 1, "u-dit: model.num_classes must be >= 1");
  const int64_t c = o.hidden_size, out_channels = o.learn_sigma ? 2 * o.in_channels : o.in_channels;

  x_embedder = register_module("x_embedder", OverlapPatchEmbed(o.in_channels, c));
  t_embedder_1 = register_module("t_embedder_1", TimestepEmbedder(c));
  y_embedder_1 = register_module("y_embedder_1", LabelEmbedder(o.num_classes, c, o.with_null_class));
  t_embedder_2 = register_module("t_embedder_2", TimestepEmbedder(2 * c));
  y_embedder_2 = register_module("y_embedder_2", LabelEmbedder(o.num_classes, 2 * c, o.with_null_class));
  t_embedder_3 = register_module("t_embedder_3", TimestepEmbedder(4 * c));
  y_embedder_3 = register_module("y_embedder_3", LabelEmbedder(o.num_classes, 4 * c, o.with_null_class));
  auto level = [&](const char* name, int64_t depth, int64_t dim) {
    auto list = register_module(name, torch::nn::ModuleList());
    for (int64_t i = 0; i < depth; ++i) list->push_back(UDiTBlock(dim, o.num_heads, o.mlp_ratio));
    return list;
  };
  encoder_level_1 = level("encoder_level_1", o.level_depths[0], c);
  down1_2 = register_module("down1_2", Resample(c, /*down=*/true));
  encoder_level_2 = level("encoder_level_2", o.level_depths[1], 2 * c);
  down2_3 = register_module("down2_3", Resample(2 * c, /*down=*/true));
  latent = level("latent", o.level_depths[2], 4 * c);
  up3_2 = register_module("up3_2", Resample(4 * c, /*down=*/false));
  reduce_chan_level2 = register_module("reduce_chan_level2", conv(4 * c, 2 * c, 1));
  decoder_level_2 = level("decoder_level_2", o.level_depths[3], 2 * c);
  up2_1 = register_module("up2_1", Resample(2 * c, /*down=*/false));
  reduce_chan_level1 = register_module("reduce_chan_level1", conv(2 * c, 2 * c, 1));
  decoder_level_1 = level("decoder_level_1", o.level_depths[4], 2 * c);
  output = register_module("output", conv(2 * c, 2 * c, 3));
  final_layer = register_module("final_layer", UDiTFinalLayer(2 * c, out_channels));
  initialize_weights();
}

std::vector<UDiTBlock> UDiT::all_blocks() const {
  std::vector<UDiTBlock> out;
  for (const auto* list : {&encoder_level_1, &encoder_level_2, &latent, &decoder_level_2,
                           &decoder_level_1}) {
    for (const auto& block : **list) out.emplace_back(std::dynamic_pointer_cast<UDiTBlockImpl>(block));
  }
  return out;
}

void UDiT::declare_width_roles(WidthRoles& roles) const {
  roles.layer("x_embedder.proj", WidthRole::kInput, InitLaw::kXavierFlat);
  const std::pair<const char*, const TimestepEmbedder*> timesteps[] = {
      {"t_embedder_1", &t_embedder_1}, {"t_embedder_2", &t_embedder_2}, {"t_embedder_3", &t_embedder_3}};
  for (const auto& [name, t] : timesteps) (*t)->declare_width_roles(roles.scope(name));
  const std::pair<const char*, const LabelEmbedder*> labels[] = {
      {"y_embedder_1", &y_embedder_1}, {"y_embedder_2", &y_embedder_2}, {"y_embedder_3", &y_embedder_3}};
  for (const auto& [name, y] : labels) (*y)->declare_width_roles(roles.scope(name));
  const std::pair<const char*, const torch::nn::ModuleList*> levels[] = {
      {"encoder_level_1", &encoder_level_1}, {"encoder_level_2", &encoder_level_2},
      {"latent", &latent}, {"decoder_level_2", &decoder_level_2}, {"decoder_level_1", &decoder_level_1}};
  for (const auto& [name, list] : levels) {
    for (size_t i = 0; i < (*list)->size(); ++i) {
      (*list)->ptr(i)->as<UDiTBlockImpl>()->declare_width_roles(roles.scope(std::string(name) + "." + std::to_string(i)));
    }
  }
  for (const char* name : {"down1_2.body.0", "down2_3.body.0", "up3_2.body.0", "up2_1.body.0"}) {
    roles.layer(name, WidthRole::kHidden, InitLaw::kXavier, /*bias=*/false);
  }
  for (const char* name : {"reduce_chan_level2", "reduce_chan_level1", "output"}) {
    roles.layer(name, WidthRole::kHidden, InitLaw::kXavier);
  }
  final_layer->declare_width_roles(roles.scope("final_layer"));
}

void UDiT::initialize_weights() {
  namespace init = torch::nn::init;
  torch::NoGradGuard no_grad;
  // Official: xavier-uniform every Linear and every Conv2d (depthwise and 1x1 too), zero biases.
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* linear = module->as<Linear>()) {
      init::xavier_uniform_(linear->weight);
      init::zeros_(linear->bias);
    } else if (auto* conv2d = module->as<torch::nn::Conv2d>()) {
      init::xavier_uniform_(conv2d->weight);
      if (conv2d->bias.defined()) init::zeros_(conv2d->bias);
    }
  }
  // The pixel embedding like a Linear over its flattened inputs.
  auto w = x_embedder->proj->weight;
  init::xavier_uniform_(w.view({w.size(0), -1}));
  for (auto* y : {&y_embedder_1, &y_embedder_2, &y_embedder_3}) {
    init::normal_((*y)->embedding_table->weight, 0.0, 0.02);
  }
  for (auto* t : {&t_embedder_1, &t_embedder_2, &t_embedder_3}) {
    init::normal_((*t)->mlp[0]->as<Linear>()->weight, 0.0, 0.02);
    init::normal_((*t)->mlp[2]->as<Linear>()->weight, 0.0, 0.02);
  }
  // adaLN-Zero: both sub-layers of every block start as the identity; the output starts at 0.
  for (auto& block : all_blocks()) {
    for (auto* mod : {&block->adaLN_modulation1, &block->adaLN_modulation2}) {
      auto* linear = (*mod)[1]->as<Linear>();
      init::zeros_(linear->weight);
      init::zeros_(linear->bias);
    }
  }
  auto* final_modulation = final_layer->adaLN_modulation[1]->as<Linear>();
  init::zeros_(final_modulation->weight);
  init::zeros_(final_modulation->bias);
  init::zeros_(final_layer->out_proj->weight);
  init::zeros_(final_layer->out_proj->bias);
}

BackboneOutput UDiT::forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) {
  check_input("U-DiT", x, t, y);
  auto c1 = t_embedder_1->forward(t) + y_embedder_1->forward(y);
  auto c2 = t_embedder_2->forward(t) + y_embedder_2->forward(y);
  auto c3 = t_embedder_3->forward(t) + y_embedder_3->forward(y);
  const bool recompute = options_.checkpoint_blocks && is_training();
  auto run = [recompute](const torch::nn::ModuleList& blocks, at::Tensor h, const at::Tensor& c) {
    for (const auto& module : *blocks) {
      auto* block = module->as<UDiTBlockImpl>();
      h = recompute ? checkpointed([block](const std::vector<at::Tensor>& in) {
                        return block->forward(in[0], in[1]);
                      }, {h, c})
                    : block->forward(h, c);
    }
    return h;
  };
  auto enc1 = run(encoder_level_1, probe("embed", x_embedder->forward(x)), c1);      // [N, C, H, W]
  auto enc2 = run(encoder_level_2, down1_2->forward(enc1), c2);      // [N, 2C, H/2, W/2]
  auto deep = run(latent, down2_3->forward(enc2), c3);               // [N, 4C, H/4, W/4]
  auto dec2 = reduce_chan_level2->forward(at::cat({up3_2->forward(deep), enc2}, 1));
  dec2 = run(decoder_level_2, dec2, c2);                             // [N, 2C, H/2, W/2]
  auto dec1 = reduce_chan_level1->forward(at::cat({up2_1->forward(dec2), enc1}, 1));
  dec1 = run(decoder_level_1, dec1, c2);                             // [N, 2C, H, W]
  return {probe("output", final_layer->forward(output->forward(dec1), c2)), {}, {}};
}

BackboneShape UDiT::shape() const {
  const auto& o = options_;
  return {o.input_size, o.in_channels, o.learn_sigma ? 2 * o.in_channels : o.in_channels,
          o.num_classes, o.with_null_class};
}

int64_t UDiT::forward_macs() const { return udit_forward_macs(options_); }
int64_t UDiT::training_forward_macs() const { return udit_forward_macs(options_, /*training_form=*/true); }

int64_t udit_forward_macs(const UDiTOptions& o, bool training_form) {
  const int64_t C = o.hidden_size, R = o.input_size;
  // One attention + FFN sub-layer at width d on an r x r map (FFN hidden width h).
  auto sub_layer = [&](int64_t d, int64_t r) {
    const int64_t n = r * r, h = static_cast<int64_t>(d * o.mlp_ratio);
    const int64_t attention = n * d * 25 + n * d * 3 * d + 2 * 4 * (n / 4) * (n / 4) * d + n * d * d;
    // Folded: d -> h, depthwise 5x5, h -> d. Trained: d -> h/2 -> h, depthwise 5x5 + 3x3 + 1x1,
    // h -> h/2 -> d.
    const int64_t ffn = training_form ? n * (d * h + h * h + 35 * h) : n * (2 * d * h + 25 * h);
    return attention + ffn + 6 * d * d;
  };
  auto level = [&](int64_t blocks, int64_t d, int64_t r) { return blocks * 2 * sub_layer(d, r); };
  auto conv = [](int64_t r, int64_t in, int64_t out, int64_t k) { return r * r * in * out * k * k; };
  const auto& depth = o.level_depths;
  int64_t macs = conv(R, o.in_channels, C, 3);
  for (int64_t d : {C, 2 * C, 4 * C}) macs += 256 * d + d * d;  // timestep MLPs
  macs += level(depth[0], C, R) + conv(R, C, C / 2, 3);
  macs += level(depth[1], 2 * C, R / 2) + conv(R / 2, 2 * C, C, 3);
  macs += level(depth[2], 4 * C, R / 4) + conv(R / 4, 4 * C, 8 * C, 3);
  macs += conv(R / 2, 4 * C, 2 * C, 1) + level(depth[3], 2 * C, R / 2) + conv(R / 2, 2 * C, 4 * C, 3);
  macs += conv(R, 2 * C, 2 * C, 1) + level(depth[4], 2 * C, R) + conv(R, 2 * C, 2 * C, 3);
  macs += 2 * C * 4 * C + conv(R, 2 * C, o.learn_sigma ? 2 * o.in_channels : o.in_channels, 3);
  return macs;
}

int64_t udit_parameter_count(const UDiTOptions& o, bool inference_form) {
  const int64_t C = o.hidden_size, in = o.in_channels, out = o.learn_sigma ? 2 * in : in;
  const int64_t classes = o.num_classes + (o.with_null_class ? 1 : 0);
  auto embedders = [&](int64_t d) { return (256 * d + d) + (d * d + d) + classes * d; };
  auto sub_layer = [&](int64_t d) {
    const auto h = static_cast<int64_t>(d * o.mlp_ratio);
    const int64_t attention = (25 * d + d) + (3 * d * d + 3 * d) + (d * d + d) + o.num_heads;
    const int64_t ffn = inference_form
                            ? (d * h + h) + (25 * h + h) + (h * d + d)
                            : (d * h / 2 + h / 2) + (h / 2 * h + h) + (25 * h + h) + (9 * h + h) +
                                  (h + h) + (h * h / 2 + h / 2) + (h / 2 * d + d);
    return attention + ffn + (6 * d * d + 6 * d);
  };
  auto level = [&](int64_t blocks, int64_t d) { return blocks * 2 * sub_layer(d); };
  const auto& depth = o.level_depths;
  int64_t n = (in * C * 9 + C) + embedders(C) + embedders(2 * C) + embedders(4 * C);
  n += level(depth[0], C) + C * (C / 2) * 9;
  n += level(depth[1], 2 * C) + 2 * C * C * 9;
  n += level(depth[2], 4 * C) + 4 * C * 8 * C * 9;
  n += (4 * C * 2 * C + 2 * C) + level(depth[3], 2 * C) + 2 * C * 4 * C * 9;
  n += (2 * C * 2 * C + 2 * C) + level(depth[4], 2 * C) + (2 * C * 2 * C * 9 + 2 * C);
  n += (2 * C * 4 * C + 4 * C) + (2 * C * out * 9 + out);
  return n;
}

int64_t UDiT::inference_parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  for (const auto& block : all_blocks()) {
    for (const auto* ffn : {&block->mlp1, &block->mlp2}) {
      int64_t training = 0;
      for (const auto& p : (*ffn)->parameters()) training += p.numel();
      n += (*ffn)->fold().numel() - training;
    }
  }
  return n;
}

}  // namespace ditlab
