#include "models/dim/dim.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "src/common/error.h"
#include "models/layers/activation_checkpoint.h"
#include "models/mup/activation_probe.h"

namespace ditlab {
namespace {

constexpr int64_t kExtraTokens = 2;  // time, class
constexpr double kRmsEps = 1e-5;

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) {
  auto x32 = x.to(at::kFloat);
  return x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + kRmsEps) * weight;
}

// U-ViT's merge of a long skip into the stream: two DxD linears on (stream, skip) for wide
// models, one Linear(2D -> D) on their concatenation for narrow ones (the official threshold).
class DiMSkipImpl : public torch::nn::Module {
 public:
  DiMSkipImpl(int64_t dim, bool wide) : wide(wide) {
    if (wide) {
      linear_a = register_module("linear_a", Linear(dim, dim));
      linear_b = register_module("linear_b", Linear(dim, dim));
    } else {
      linear = register_module("linear", Linear(2 * dim, dim));
    }
  }
  void declare_width_roles(WidthRoles roles) const {
    for (const char* name : {"linear", "linear_a", "linear_b"}) {
      if (named_children().contains(name)) roles.layer(name, WidthRole::kHidden, InitLaw::kFanIn);
    }
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& skip) {
    return wide ? linear_a->forward(x) + linear_b->forward(skip)
                : linear->forward(at::cat({x, skip}, -1));
  }
  bool wide;
  Linear linear{nullptr}, linear_a{nullptr}, linear_b{nullptr};
};
TORCH_MODULE(DiMSkip);

MambaOptions mamba_options(const DiMOptions& o) {
  MambaOptions m;
  m.d_model = o.hidden_size;
  m.d_state = o.d_state;
  m.d_conv = o.d_conv;
  m.expand = o.expand;
  return m;
}

int64_t out_channels(const DiMOptions& o) { return o.learn_sigma ? 2 * o.in_channels : o.in_channels; }

void check_options(const DiMOptions& o) {
  if (o.patch_size < 1 || o.input_size % o.patch_size != 0) {
    throw ConfigError("model.patch_size " + std::to_string(o.patch_size) +
                      " does not divide model.input_size " + std::to_string(o.input_size) + " (dim)");
  }
  if (o.depth < 1) throw ConfigError("model.depth must be >= 1 for dim");
}

}  // namespace

int scan_order_of(int64_t block, int64_t depth) {
  static const int cycle[4] = {0, -2, 1, -1};
  if (block == depth - 1) return 0;  // tokens end in row-major order
  const int64_t middle = depth / 2;
  const int64_t position = block <= middle ? block : middle - (block - middle);
  return cycle[((position % 4) + 4) % 4];
}

at::Tensor scan_permutation(int order, int64_t rows, int64_t cols) {
  auto grid = at::arange(rows * cols, at::TensorOptions().dtype(at::kLong)).view({rows, cols});
  switch (order) {
    case 0: return grid.reshape({-1});
    case -2: return grid.reshape({-1}).flip({0});
    case 1: return grid.t().reshape({-1});
    case -1: return grid.t().reshape({-1}).flip({0});
  }
  throw ConfigError("scan order " + std::to_string(order) + " is not one of 0, -2, 1, -1");
}

DiMBlockImpl::DiMBlockImpl(int64_t dim, const MambaOptions& mamba, int64_t depth) {
  norm_weight = register_parameter("norm_weight", at::ones({dim}));
  scale_shift_table = register_parameter("scale_shift_table", at::randn({3, dim}) / std::sqrt(static_cast<double>(dim)));
  mixer = register_module("mixer", MambaMixer(mamba));
  // GPT-2 style: the output projection re-drawn (kaiming-uniform) and divided by sqrt(depth).
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(mixer->out_proj->weight, std::sqrt(5.0));
  mixer->out_proj->weight.div_(std::sqrt(static_cast<double>(depth)));
}

void DiMBlockImpl::declare_width_roles(WidthRoles roles) const {
  roles.param("norm_weight", WidthRole::kVector, InitLaw::kConstant);
  roles.param("scale_shift_table", WidthRole::kVector, InitLaw::kFanIn);  // N(0, 1/D)
  mixer->declare_width_roles(roles.scope("mixer"));
}

at::Tensor DiMBlockImpl::forward(const at::Tensor& r, const at::Tensor& c3, const at::Tensor& order,
                                 const at::Tensor& inverse) {
  auto m = c3 + scale_shift_table.unsqueeze(0);  // [N, 3, D]: shift, scale, gate
  auto shift = m.select(1, 0).unsqueeze(1), scale = m.select(1, 1).unsqueeze(1),
       gate = m.select(1, 2).unsqueeze(1);
  auto h = rms_norm(r, norm_weight) * (1 + scale) + shift;
  h = mixer->forward(h.index_select(1, order)).index_select(1, inverse);
  return probe("block", (1 + gate) * h);
}

void DiM::declare_width_roles(WidthRoles& roles) const {
  x_embedder->declare_width_roles(roles.scope("x_embedder"), InitLaw::kFanIn);  // PyTorch default
  roles.layer("first_smoother", WidthRole::kVector, InitLaw::kFanIn);  // depthwise 3x3
  roles.layer("last_smoother", WidthRole::kVector, InitLaw::kFanIn);
  roles.param("label_emb.weight", WidthRole::kInput, InitLaw::kConstant);
  roles.param("adaln_label_emb.weight", WidthRole::kInput, InitLaw::kConstant);
  t_embedder->declare_width_roles(roles.scope("t_embedder"));
  roles.layer("adaln_single", WidthRole::kHidden, InitLaw::kFanIn);
  for (const char* name : {"pos_embed", "pad_token", "dec_split_pad", "norm_f_weight"}) {
    roles.param(name, WidthRole::kVector, InitLaw::kConstant);
  }
  for (size_t i = 0; i < blocks->size(); ++i) {
    blocks->ptr(i)->as<DiMBlockImpl>()->declare_width_roles(roles.scope("blocks." + std::to_string(i)));
  }
  for (size_t i = 0; i < skip_linears->size(); ++i) {
    skip_linears->ptr(i)->as<DiMSkipImpl>()->declare_width_roles(roles.scope("skip_linears." + std::to_string(i)));
  }
  roles.layer("final_modulation", WidthRole::kHidden, InitLaw::kFanIn);
  roles.layer("final_linear", WidthRole::kOutput, InitLaw::kFanIn);  // PyTorch default, bias 0
}

DiM::DiM(const DiMOptions& options) : options_(options) {
  check_options(options);
  const auto& o = options_;
  const int64_t D = o.hidden_size, g = grid(), pad = o.d_conv;
  x_embedder = register_module("x_embedder", PatchEmbed(o.in_channels, D, o.patch_size));
  auto smoother = [&] {
    return torch::nn::Conv2d(torch::nn::Conv2dOptions(D, D, 3).padding(1).groups(D));
  };
  first_smoother = register_module("first_smoother", smoother());
  last_smoother = register_module("last_smoother", smoother());
  const int64_t table_rows = o.num_classes + (o.with_null_class ? 1 : 0);
  label_emb = register_module("label_emb", torch::nn::Embedding(table_rows, D));
  t_embedder = register_module("t_embedder", TimestepEmbedder(D));
  adaln_label_emb = register_module("adaln_label_emb", torch::nn::Embedding(table_rows, D));
  adaln_single = register_module("adaln_single", Linear(D, 3 * D));
  pos_embed = register_parameter("pos_embed", at::zeros({1, kExtraTokens + g * g, D}));
  pad_token = register_parameter("pad_token", at::randn({pad, D}) * 0.02);
  dec_split_pad = register_parameter("dec_split_pad", at::randn({pad, D}) * 0.02);
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.depth; ++i) blocks->push_back(DiMBlock(D, mamba_options(o), o.depth));
  skips_ = (o.depth - 1) / 2;
  skip_linears = register_module("skip_linears", torch::nn::ModuleList());
  for (int64_t i = 0; i < skips_; ++i) skip_linears->push_back(DiMSkip(D, o.wide_skips()));
  norm_f_weight = register_parameter("norm_f_weight", at::ones({D}));
  final_modulation = register_module("final_modulation", Linear(D, 2 * D));
  final_linear = register_module("final_linear", Linear(D, o.patch_size * o.patch_size * out_channels(o)));

  // Initialisation (_init_weights_mamba, init_embedders): biases of plain linears zeroed,
  // embeddings and the timestep MLP N(0, 0.02); no zero-initialised modulation.
  torch::NoGradGuard no_grad;
  std::vector<const torch::nn::LinearImpl*> dt_projs;  // their bias is Mamba's dt initialisation
  for (auto& b : *blocks) dt_projs.push_back(b->as<DiMBlockImpl>()->mixer->dt_proj.get());
  for (auto& module : modules(/*include_self=*/false)) {
    auto* linear = module->as<torch::nn::Linear>();
    if (linear == nullptr || !linear->bias.defined()) continue;
    if (std::find(dt_projs.begin(), dt_projs.end(), linear) == dt_projs.end()) linear->bias.zero_();
  }
  torch::nn::init::normal_(label_emb->weight, 0.0, 0.02);
  torch::nn::init::normal_(adaln_label_emb->weight, 0.0, 0.02);
  for (int idx : {0, 2}) {
    torch::nn::init::normal_(t_embedder->mlp[idx]->as<torch::nn::Linear>()->weight, 0.0, 0.02);
  }

  // The scan permutations over the whole sequence: the extra tokens and the dec_split pads stay
  // in front, only the padded grid is reordered.
  const int64_t front = kExtraTokens + pad, side = g + pad;
  auto head = at::arange(front, at::TensorOptions().dtype(at::kLong));
  for (int64_t i = 0; i < o.depth; ++i) {
    auto order = at::cat({head, scan_permutation(scan_order_of(i, o.depth), side, side) + front});
    orders_.push_back(order);
    inverses_.push_back(at::argsort(order));
  }
}

int64_t DiM::sequence_length() const {
  const int64_t side = grid() + options_.d_conv;
  return kExtraTokens + options_.d_conv + side * side;
}

BackboneShape DiM::shape() const {
  const auto& o = options_;
  return {o.input_size, o.in_channels, out_channels(o), o.num_classes, o.with_null_class};
}

at::Tensor DiM::embed(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) {
  const auto& o = options_;
  check_input("DiM", x, t, y);
  const int64_t n = x.size(0), D = o.hidden_size, g = grid(), pad = o.d_conv;
  auto time_token = timestep_frequency_embedding(t, D).to(pos_embed.scalar_type());
  auto class_token = label_emb->forward(y);
  auto tokens = at::cat({time_token.unsqueeze(1), class_token.unsqueeze(1), x_embedder->forward(x)}, 1) +
                pos_embed;  // [N, 2 + g*g, D]
  auto extras = tokens.narrow(1, 0, kExtraTokens);
  // The smoother and the lateral pads act on the [N, D, g, g] grid.
  auto image = tokens.narrow(1, kExtraTokens, g * g).transpose(1, 2).reshape({n, D, g, g});
  image = first_smoother->forward(image);
  auto pads = pad_token.to(image.scalar_type()).t();  // [D, pad]: pad column / row j
  image = at::cat({image, pads.view({1, D, 1, pad}).expand({n, D, g, pad})}, 3);           // right
  image = at::cat({image, pads.view({1, D, pad, 1}).expand({n, D, pad, g + pad})}, 2);     // bottom
  auto grid_tokens = image.flatten(2).transpose(1, 2);  // [N, (g+pad)^2, D], row-major
  auto split = dec_split_pad.to(grid_tokens.scalar_type()).unsqueeze(0).expand({n, pad, D});
  return at::cat({extras, split, grid_tokens}, 1);
}

at::Tensor DiM::run_block(int64_t i, const at::Tensor& r, const at::Tensor& c3) {
  auto* block = blocks->ptr(i)->as<DiMBlockImpl>();
  if (options_.checkpoint_blocks && is_training()) {
    // Keeps each block's inputs only; backward runs the block again.
    return checkpointed([block](const std::vector<at::Tensor>& in) {
      return block->forward(in[0], in[1], in[2], in[3]);
    }, {r, c3, orders_[i], inverses_[i]});
  }
  return block->forward(r, c3, orders_[i], inverses_[i]);
}

BackboneOutput DiM::forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) {
  const auto& o = options_;
  auto tokens = probe("embed", embed(x, t, y));  // checks x, t and y first
  const int64_t n = x.size(0), D = o.hidden_size, g = grid(), pad = o.d_conv;
  // adaLN-single: one modulation for every block (each adds its own table).
  auto c = t_embedder->forward(t) + adaln_label_emb->forward(y);
  auto c3 = adaln_single->forward(at::silu(c)).view({n, 3, D});
  for (auto* indices : {&orders_, &inverses_}) {  // moved to the model's device once
    for (auto& index : *indices) {
      if (index.device() != x.device()) index = index.to(x.device());
    }
  }

  at::Tensor r = tokens.to(at::kFloat);  // the residual stream, fp32 as Mamba keeps it
  std::vector<at::Tensor> skips;
  for (int64_t i = 0; i < o.depth; ++i) {
    if (i >= o.depth - skips_) {
      auto* merge = skip_linears->ptr(o.depth - 1 - i)->as<DiMSkipImpl>();
      r = merge->forward(r, skips.back()).to(at::kFloat);  // the stream restarts from the merge
      skips.pop_back();
    }
    r = r + run_block(i, r, c3);
    if (i >= 1 && i <= skips_) skips.push_back(r);
  }
  // Back to the image in the official order (AdapterAttnForMamba.finalize_sequence, then
  // Mamba2DModel's norm_out): drop the extra tokens and pads, unpad the grid, smooth, and only
  // then the final RMSNorm (a FusedAddRMSNorm whose residual finalize_sequence already added).
  auto grid_tokens = r.narrow(1, kExtraTokens + pad, (g + pad) * (g + pad));  // [N, (g+pad)^2, D]
  // [N, (g+pad)^2, D] -> [N, D, g+pad, g+pad] -> [N, D, g, g]
  auto image = grid_tokens.transpose(1, 2).reshape({n, D, g + pad, g + pad});
  image = image.narrow(2, 0, g).narrow(3, 0, g).to(last_smoother->weight.scalar_type());
  image = last_smoother->forward(image);
  // [N, D, g, g] -> [N, g*g, D], normalised in fp32
  auto image_tokens = rms_norm(image.flatten(2).transpose(1, 2), norm_f_weight);
  // The final modulation comes from the time token and the class embedding.
  auto cond = timestep_frequency_embedding(t, D).to(image_tokens.scalar_type()) + label_emb->forward(y);
  auto m = final_modulation->forward(at::silu(cond)).chunk(2, 1);  // shift, scale
  image_tokens = image_tokens * (1 + m[1].unsqueeze(1)) + m[0].unsqueeze(1);
  BackboneOutput out;
  out.out = probe("output", unpatchify(final_linear->forward(image_tokens), o.patch_size, out_channels(o)));
  return out;
}

int64_t DiM::forward_macs() const { return dim_forward_macs(options_); }

namespace {
// What one Mamba mixer costs per token (MACs) and in parameters.
struct MixerCost {
  int64_t macs_per_token, parameters;
};
MixerCost mixer_cost(const DiMOptions& o) {
  const int64_t D = o.hidden_size, E = o.expand * D, R = (D + 15) / 16, N = o.d_state, K = o.d_conv;
  const int64_t macs = D * 2 * E          // in_proj
                       + E * K            // depthwise conv1d
                       + E * (R + 2 * N)  // x_proj
                       + R * E            // dt_proj
                       + 4 * E * N        // scan: delta A, exp(delta A) h, delta B u, <C, h>
                                          // (fvcore's count of mamba_ssm's selective_scan_ref)
                       + E * D;           // out_proj
  const int64_t params = D * 2 * E + (E * K + E) + E * (R + 2 * N) + (R * E + E) + E * N + E + E * D;
  return {macs, params};
}
}  // namespace

int64_t dim_forward_macs(const DiMOptions& o) {
  check_options(o);
  const int64_t D = o.hidden_size, g = o.input_size / o.patch_size, pad = o.d_conv;
  const int64_t L = kExtraTokens + pad + (g + pad) * (g + pad);
  const int64_t skips = (o.depth - 1) / 2;
  const int64_t skip_macs = 2 * D * D;  // either form: 2D x D per token
  int64_t macs = g * g * o.in_channels * o.patch_size * o.patch_size * D;  // patch embed
  macs += 2 * g * g * D * 9;                                                // smoothers
  macs += o.depth * L * mixer_cost(o).macs_per_token + skips * L * skip_macs;
  macs += g * g * D * o.patch_size * o.patch_size * out_channels(o);       // final linear
  return macs;
}

int64_t dim_parameter_count(const DiMOptions& o) {
  check_options(o);
  const int64_t D = o.hidden_size, g = o.input_size / o.patch_size, pad = o.d_conv;
  const int64_t table = o.num_classes + (o.with_null_class ? 1 : 0);
  const int64_t patch = o.in_channels * o.patch_size * o.patch_size;
  int64_t n = patch * D + D;                 // x_embedder
  n += 2 * (9 * D + D);                      // smoothers
  n += table * D;                            // class token
  n += (256 * D + D) + (D * D + D);          // t_embedder
  n += table * D + (D * 3 * D + 3 * D);      // adaLN-single
  n += (kExtraTokens + g * g) * D + 2 * pad * D;  // pos_embed, pads
  n += o.depth * (D + 3 * D + mixer_cost(o).parameters);
  const int64_t skips = (o.depth - 1) / 2;
  n += skips * (o.wide_skips() ? 2 * (D * D + D) : 2 * D * D + D);
  const int64_t out_per_token = o.patch_size * o.patch_size * out_channels(o);
  n += D + (D * 2 * D + 2 * D) + (D * out_per_token + out_per_token);  // norm_f, modulation, linear
  return n;
}

}  // namespace ditlab
