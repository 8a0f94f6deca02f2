// Skip-DiT: "Towards Stabilized and Efficient Diffusion Transformers through Long-Skip-Connections
// with Spectral Constraints", mirroring OpenSparseLLMs/Skip-DiT (class-to-image, DiT_skip and
// DiT_cache). A DiT whose second half of blocks each first merge a long skip from the first half:
// block depth-1-i receives block i's output through Linear(LayerNorm(concat[x, skip])), which
// replaces x. The DiT part keeps DiT's keys, so a DiT checkpoint initialises it.
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "models/dit/dit.h"
#include "models/layers/linear.h"

namespace ditlab {

// The official ResidualLinear: only a Linear(2D -> D) (key "linear"); despite the name there is
// no residual.
class SkipLinearImpl : public torch::nn::Module {
 public:
  explicit SkipLinearImpl(int64_t hidden_size);
  at::Tensor forward(const at::Tensor& merged) { return linear->forward(merged); }
  Linear linear{nullptr};
};
TORCH_MODULE(SkipLinear);

// The options the Skip-DiT constructor refuses: an odd depth, and DiT's (check_dit_options).
void check_skip_dit_options(const DiTOptions& options);
// Backbone::forward_macs() of the Skip-DiT these options describe, without building it: DiT's
// count plus one Linear(2D -> D) per skip over every token the blocks see (dit_tokens).
int64_t skip_dit_forward_macs(const DiTOptions& options);
// Its parameter count: DiT's plus depth/2 x (LayerNorm(2D), Linear(2D -> D)).
int64_t skip_dit_parameter_count(const DiTOptions& options, bool active_only = false);

class SkipDiT : public DiT {
 public:
  // depth must be even. The skip modules keep LibTorch's default initialisation (they are built
  // after DiT's initialisation, as in the official code), so unlike DiT the network is not the
  // identity at init.
  explicit SkipDiT(const DiTOptions& options);

  BackboneOutput forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) override;
  at::Tensor run_blocks(at::Tensor tokens, const at::Tensor& cond) override;
  int64_t forward_macs() const override;  // DiT's plus the skip linears (2D -> D per token)
  void declare_width_roles(WidthRoles& roles) const override;

  // Skip-Cache: with interval N, every N-th call runs every block and keeps the input of block
  // depth - cache.depth; the calls between run only the first and the last cache.depth blocks
  // and take the kept tensor in place of the middle ones. As in the official DiT_cache, a call
  // with t <= 20 clears the cache, so the last denoising steps all run in full.
  void begin_sampling(const SamplingCache& cache) override;
  void end_sampling() override;

  torch::nn::ModuleList skip_norms{nullptr};    // depth/2 x LayerNorm(2D), affine, in fp32
  torch::nn::ModuleList skip_linears{nullptr};  // depth/2 x SkipLinear

  static constexpr int64_t kCacheClearAtOrBelowT = 20;

 private:
  enum class CacheUse { kNone, kStore, kReuse };
  at::Tensor run(at::Tensor tokens, const at::Tensor& cond, CacheUse use);
  at::Tensor merge_skip(int64_t decoder_index, const at::Tensor& x, const at::Tensor& skip);

  SamplingCache cache_options_;
  bool caching_ = false;
  int64_t calls_ = 0;
  at::Tensor cached_;  // input of block depth - cache.depth at the last full call
};

}  // namespace ditlab
