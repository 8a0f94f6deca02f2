#include "models/vae/autoencoder_kl.h"

#include <ATen/ATen.h>
#include <torch/nn/functional/upsampling.h>

#include <cmath>

#include "src/common/compat.h"
#include "src/common/error.h"

namespace ditlab {
namespace {

constexpr double kNormEps = 1e-6;

torch::nn::GroupNorm group_norm(int64_t groups, int64_t channels) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(kNormEps));
}

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = -1) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                               .stride(stride)
                               .padding(padding < 0 ? kernel / 2 : padding));
}

// A module whose only child is "conv" (diffusers' Downsample2D / Upsample2D).
class ResamplerImpl : public torch::nn::Module {
 public:
  ResamplerImpl(int64_t channels, bool down)
      : down_(down), conv(register_module("conv", down ? ::ditlab::conv(channels, channels, 3, 2, 0)
                                                       : ::ditlab::conv(channels, channels, 3))) {}
  at::Tensor forward(const at::Tensor& x) {
    if (down_) return conv->forward(at::constant_pad_nd(x, {0, 1, 0, 1}));  // asymmetric, as SD
    return conv->forward(at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2}));
  }

 private:
  bool down_;

 public:
  torch::nn::Conv2d conv;
};
TORCH_MODULE(Resampler);

void check_options(const AutoencoderKLOptions& o) {
  auto fail = [](const std::string& what) { throw ConfigError("autoencoder: " + what); };
  if (o.block_out_channels.empty()) fail("block_out_channels must list at least one width");
  if (o.norm_num_groups < 1) fail("norm_num_groups must be >= 1");
  for (int64_t c : o.block_out_channels) {
    if (c < 1 || c % o.norm_num_groups != 0) {
      fail("every block_out_channels entry must be a positive multiple of norm_num_groups " +
           std::to_string(o.norm_num_groups) + " (got " + std::to_string(c) + ")");
    }
  }
  if (o.layers_per_block < 1) fail("layers_per_block must be >= 1");
  if (o.latent_channels < 1 || o.in_channels < 1 || o.out_channels < 1) {
    fail("latent_channels, in_channels and out_channels must be >= 1");
  }
}

at::Tensor run(const torch::nn::ModuleList& list, at::Tensor x) {
  for (const auto& m : *list) x = m->as<VaeResnetBlockImpl>()->forward(x);
  return x;
}

}  // namespace

at::Tensor DiagonalGaussian::std() const { return at::exp(0.5 * logvar); }

at::Tensor DiagonalGaussian::sample(c10::optional<at::Generator> generator) const {
  auto noise = at::empty_like(mean).normal_(0.0, 1.0, generator);
  return mean + std() * noise;
}

at::Tensor DiagonalGaussian::kl() const {
  return 0.5 * (mean.pow(2) + at::exp(logvar) - 1.0 - logvar).sum({1, 2, 3});
}

VaeResnetBlockImpl::VaeResnetBlockImpl(int64_t in_channels, int64_t out_channels, int64_t groups) {
  norm1 = register_module("norm1", group_norm(groups, in_channels));
  conv1 = register_module("conv1", conv(in_channels, out_channels, 3));
  norm2 = register_module("norm2", group_norm(groups, out_channels));
  conv2 = register_module("conv2", conv(out_channels, out_channels, 3));
  if (in_channels != out_channels) {
    conv_shortcut = register_module("conv_shortcut", conv(in_channels, out_channels, 1));
  }
}

at::Tensor VaeResnetBlockImpl::forward(const at::Tensor& x) {
  auto h = conv1->forward(at::silu(norm1->forward(x)));
  h = conv2->forward(at::silu(norm2->forward(h)));
  return (conv_shortcut.is_empty() ? x : conv_shortcut->forward(x)) + h;
}

VaeAttentionImpl::VaeAttentionImpl(int64_t channels, int64_t groups) {
  group_norm = register_module("group_norm", ::ditlab::group_norm(groups, channels));
  to_q = register_module("to_q", Linear(channels, channels));
  to_k = register_module("to_k", Linear(channels, channels));
  to_v = register_module("to_v", Linear(channels, channels));
  to_out = register_module("to_out", torch::nn::ModuleList(Linear(channels, channels)));
}

at::Tensor VaeAttentionImpl::forward(const at::Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto tokens = group_norm->forward(x).view({n, c, h * w}).transpose(1, 2);  // [N, HW, C]
  auto head = [&](Linear& proj) { return proj->forward(tokens).unsqueeze(1); };  // one head
  auto out = compat::scaled_dot_product_attention(head(to_q), head(to_k), head(to_v),
                                                  1.0 / std::sqrt(static_cast<double>(c)));
  out = to_out[0]->as<Linear>()->forward(out.squeeze(1));
  return out.transpose(1, 2).reshape({n, c, h, w}) + x;
}

VaeMidBlockImpl::VaeMidBlockImpl(int64_t channels, int64_t groups) {
  resnets = register_module("resnets", torch::nn::ModuleList(VaeResnetBlock(channels, channels, groups),
                                                            VaeResnetBlock(channels, channels, groups)));
  attentions = register_module("attentions", torch::nn::ModuleList(VaeAttention(channels, groups)));
}

at::Tensor VaeMidBlockImpl::forward(const at::Tensor& x) {
  auto h = resnets[0]->as<VaeResnetBlockImpl>()->forward(x);
  h = attentions[0]->as<VaeAttentionImpl>()->forward(h);
  return resnets[1]->as<VaeResnetBlockImpl>()->forward(h);
}

VaeLevelImpl::VaeLevelImpl(int64_t in_channels, int64_t out_channels, int64_t blocks, int64_t groups,
                           bool down, bool resample)
    : down(down) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < blocks; ++i) {
    resnets->push_back(VaeResnetBlock(i == 0 ? in_channels : out_channels, out_channels, groups));
  }
  if (resample) {
    resamplers = register_module(down ? "downsamplers" : "upsamplers",
                                 torch::nn::ModuleList(Resampler(out_channels, down)));
  }
}

at::Tensor VaeLevelImpl::forward(const at::Tensor& x) {
  auto h = run(resnets, x);
  return resamplers.is_empty() ? h : resamplers[0]->as<ResamplerImpl>()->forward(h);
}

VaeEncoderImpl::VaeEncoderImpl(const AutoencoderKLOptions& o) {
  const auto& ch = o.block_out_channels;
  const int64_t g = o.norm_num_groups, levels = static_cast<int64_t>(ch.size());
  conv_in = register_module("conv_in", conv(o.in_channels, ch[0], 3));
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < levels; ++i) {
    down_blocks->push_back(VaeLevel(i == 0 ? ch[0] : ch[i - 1], ch[i], o.layers_per_block, g,
                                    /*down=*/true, /*resample=*/i + 1 < levels));
  }
  mid_block = register_module("mid_block", VaeMidBlock(ch.back(), g));
  conv_norm_out = register_module("conv_norm_out", group_norm(g, ch.back()));
  conv_out = register_module("conv_out", conv(ch.back(), 2 * o.latent_channels, 3));
}

at::Tensor VaeEncoderImpl::forward(const at::Tensor& x) {
  auto h = conv_in->forward(x);
  for (const auto& level : *down_blocks) h = level->as<VaeLevelImpl>()->forward(h);
  h = mid_block->forward(h);
  return conv_out->forward(at::silu(conv_norm_out->forward(h)));
}

VaeDecoderImpl::VaeDecoderImpl(const AutoencoderKLOptions& o) {
  const std::vector<int64_t> ch(o.block_out_channels.rbegin(), o.block_out_channels.rend());
  const int64_t g = o.norm_num_groups, levels = static_cast<int64_t>(ch.size());
  conv_in = register_module("conv_in", conv(o.latent_channels, ch[0], 3));
  mid_block = register_module("mid_block", VaeMidBlock(ch[0], g));
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < levels; ++i) {
    up_blocks->push_back(VaeLevel(i == 0 ? ch[0] : ch[i - 1], ch[i], o.layers_per_block + 1, g,
                                  /*down=*/false, /*resample=*/i + 1 < levels));
  }
  conv_norm_out = register_module("conv_norm_out", group_norm(g, ch.back()));
  conv_out = register_module("conv_out", conv(ch.back(), o.out_channels, 3));
}

at::Tensor VaeDecoderImpl::forward(const at::Tensor& z) {
  auto h = mid_block->forward(conv_in->forward(z));
  for (const auto& level : *up_blocks) h = level->as<VaeLevelImpl>()->forward(h);
  return conv_out->forward(at::silu(conv_norm_out->forward(h)));
}

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLOptions& options) : options_(options) {
  check_options(options_);
  const int64_t latent = options_.latent_channels;
  encoder = register_module("encoder", VaeEncoder(options_));
  decoder = register_module("decoder", VaeDecoder(options_));
  quant_conv = register_module("quant_conv", conv(2 * latent, 2 * latent, 1));
  post_quant_conv = register_module("post_quant_conv", conv(latent, latent, 1));
}

DiagonalGaussian AutoencoderKLImpl::encode(const at::Tensor& images) {
  const int64_t f = options_.downsampling();
  if (images.dim() != 4 || images.size(1) != options_.in_channels || images.size(2) % f != 0 ||
      images.size(3) % f != 0) {
    throw ShapeError("autoencoder: images must be [N, " + std::to_string(options_.in_channels) +
                     ", H, W] with H and W multiples of " + std::to_string(f) + ", got " +
                     c10::str(images.sizes()));
  }
  auto moments = quant_conv->forward(encoder->forward(images)).chunk(2, 1);
  return {moments[0], at::clamp(moments[1], -30.0, 20.0)};
}

at::Tensor AutoencoderKLImpl::decode(const at::Tensor& latents) {
  if (latents.dim() != 4 || latents.size(1) != options_.latent_channels) {
    throw ShapeError("autoencoder: latents must be [N, " + std::to_string(options_.latent_channels) +
                     ", h, w], got " + c10::str(latents.sizes()));
  }
  return decoder->forward(post_quant_conv->forward(latents));
}

}  // namespace ditlab
