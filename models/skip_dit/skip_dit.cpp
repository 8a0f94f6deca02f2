#include "models/skip_dit/skip_dit.h"

#include <ATen/ATen.h>

#include <vector>

#include "src/common/error.h"

namespace ditlab {

SkipLinearImpl::SkipLinearImpl(int64_t hidden_size) {
  linear = register_module("linear", Linear(2 * hidden_size, hidden_size));
}

void check_skip_dit_options(const DiTOptions& o) {
  if (o.depth % 2 != 0) {
    throw ConfigError("model.depth " + std::to_string(o.depth) + ": a skip-dit model needs an even "
                      "depth (block depth-1-i takes the skip of block i)");
  }
  check_dit_options(o);
}

int64_t skip_dit_forward_macs(const DiTOptions& o) {
  // One Linear(2D -> D) per skip over every token the blocks see (in-context: the 2 extra too).
  return dit_forward_macs(o) + (o.depth / 2) * dit_tokens(o) * 2 * o.hidden_size * o.hidden_size;
}

int64_t skip_dit_parameter_count(const DiTOptions& o, bool active_only) {
  const int64_t D = o.hidden_size;
  const int64_t per_skip = 2 * 2 * D + (2 * D * D + D);  // LayerNorm(2D) affine, Linear(2D -> D)
  return dit_parameter_count(o, active_only) + (o.depth / 2) * per_skip;
}

namespace {
const DiTOptions& checked(const DiTOptions& o) {
  check_skip_dit_options(o);
  return o;
}
}  // namespace

SkipDiT::SkipDiT(const DiTOptions& o) : DiT(checked(o)) {
  skip_norms = register_module("skip_norms", torch::nn::ModuleList());
  skip_linears = register_module("skip_linears", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.depth / 2; ++i) {
    skip_norms->push_back(
        torch::nn::LayerNorm(torch::nn::LayerNormOptions({2 * o.hidden_size}).eps(1e-6)));
    skip_linears->push_back(SkipLinear(o.hidden_size));
  }
}

at::Tensor SkipDiT::merge_skip(int64_t decoder_index, const at::Tensor& x, const at::Tensor& skip) {
  auto* norm = skip_norms[decoder_index]->as<torch::nn::LayerNorm>();
  // The official FP32_Layernorm: normalise in fp32 whatever the autocast dtype, cast back.
  auto merged = at::cat({x, skip}, -1);
  auto normed = at::layer_norm(merged.to(at::kFloat), {merged.size(-1)},
                               norm->weight.to(at::kFloat), norm->bias.to(at::kFloat), 1e-6)
                    .to(merged.scalar_type());
  return skip_linears[decoder_index]->as<SkipLinearImpl>()->forward(normed);
}

at::Tensor SkipDiT::run(at::Tensor x, const at::Tensor& cond, CacheUse use) {
  const int64_t depth = static_cast<int64_t>(blocks->size()), half = depth / 2;
  const int64_t resume_at = depth - cache_options_.depth;  // first deep block that runs again
  std::vector<at::Tensor> skips;
  for (int64_t i = 0; i < depth; ++i) {
    if (use == CacheUse::kReuse && i >= cache_options_.depth && i < resume_at) continue;
    if (use != CacheUse::kNone && i == resume_at) {
      if (use == CacheUse::kStore) cached_ = x;
      else x = cached_;
    }
    if (i >= half) {
      at::Tensor skip = skips.back();  // block depth-1-i's output
      skips.pop_back();
      x = merge_skip(i - half, x, skip);
    }
    x = run_block(i, x, cond);
    if (i < half) skips.push_back(x);
  }
  return x;
}

int64_t SkipDiT::forward_macs() const { return skip_dit_forward_macs(options()); }

void SkipDiT::declare_width_roles(WidthRoles& roles) const {
  DiT::declare_width_roles(roles);
  for (size_t i = 0; i < skip_linears->size(); ++i) {
    roles.layer("skip_norms." + std::to_string(i), WidthRole::kVector, InitLaw::kConstant);
    // Created after DiT's initialisation, so PyTorch's default init, bias included (as official).
    roles.layer("skip_linears." + std::to_string(i) + ".linear", WidthRole::kHidden, InitLaw::kFanIn,
                /*bias=*/true, /*bias_init=*/InitLaw::kFanIn);
  }
}

at::Tensor SkipDiT::run_blocks(at::Tensor tokens, const at::Tensor& cond) {
  return run(std::move(tokens), cond, CacheUse::kNone);
}

BackboneOutput SkipDiT::forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) {
  if (!caching_) return DiT::forward(x, t, y);
  Embedded e = embed(x, t, y);
  const bool reusable = cached_.defined() && cached_.sizes() == e.tokens.sizes() &&
                        calls_ % cache_options_.interval != 0;
  auto out = head(run(e.tokens, e.cond, reusable ? CacheUse::kReuse : CacheUse::kStore), e.cond);
  ++calls_;
  if (t.min().item<int64_t>() <= kCacheClearAtOrBelowT) {
    calls_ = 0;
    cached_ = at::Tensor();
  }
  return {out, {}, {}};
}

void SkipDiT::begin_sampling(const SamplingCache& cache) {
  const int64_t half = static_cast<int64_t>(blocks->size()) / 2;
  if (cache.interval < 1) {
    throw ConfigError("sample.cache_interval " + std::to_string(cache.interval) + " must be >= 1");
  }
  // At half the depth no block would be skipped: the cache would only add staleness.
  if (cache.interval > 1 && (cache.depth < 1 || cache.depth >= half)) {
    throw ConfigError("sample.cache_depth " + std::to_string(cache.depth) + " must be within 1.." +
                      std::to_string(half - 1) + " (below half of model.depth " +
                      std::to_string(2 * half) + ", so that some blocks are skipped)");
  }
  cache_options_ = cache;
  caching_ = cache.interval > 1;
  calls_ = 0;
  cached_ = at::Tensor();
}

void SkipDiT::end_sampling() {
  caching_ = false;
  calls_ = 0;
  cached_ = at::Tensor();
}

}  // namespace ditlab
