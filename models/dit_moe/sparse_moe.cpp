#include "models/dit_moe/sparse_moe.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>

#include "src/common/error.h"
#include "models/mup/activation_probe.h"

namespace ditlab {

SwiGluImpl::SwiGluImpl(int64_t dim, int64_t hidden) {
  auto linear = [](int64_t in, int64_t out) {
    return Linear(torch::nn::LinearOptions(in, out).bias(false));
  };
  gate_proj = register_module("gate_proj", linear(dim, hidden));
  up_proj = register_module("up_proj", linear(dim, hidden));
  down_proj = register_module("down_proj", linear(hidden, dim));
}

at::Tensor SwiGluImpl::forward(const at::Tensor& x) {
  return down_proj->forward(at::silu(gate_proj->forward(x)) * up_proj->forward(x));
}

MoeGateImpl::MoeGateImpl(int64_t dim, int64_t num_experts) {
  weight = register_parameter("weight", at::empty({num_experts, dim}));
  takes_output_mult = false;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
}

at::Tensor MoeGateImpl::logits(const at::Tensor& tokens) const {
  return at::linear(tokens, readout_multiplier == 1.0 ? weight : weight * readout_multiplier);
}

void SwiGluImpl::declare_width_roles(WidthRoles roles) const {
  for (const char* name : {"gate_proj", "up_proj", "down_proj"}) {
    roles.layer(name, WidthRole::kHidden, InitLaw::kXavier, /*bias=*/false);
  }
}

void SparseMoeImpl::declare_width_roles(WidthRoles roles) const {
  for (size_t e = 0; e < experts->size(); ++e) {
    experts->ptr(e)->as<SwiGluImpl>()->declare_width_roles(roles.scope("experts." + std::to_string(e)));
  }
  shared_experts->declare_width_roles(roles.scope("shared_experts"));
  roles.param("gate.weight", WidthRole::kOutput, InitLaw::kFanIn);
}

SparseMoeImpl::SparseMoeImpl(int64_t dim, double hidden_ratio, const MoeOptions& o) : options(o) {
  if (o.num_experts < 1) throw ConfigError("model.moe.num_experts must be >= 1 for a MoE layer");
  if (o.experts_per_token < 1 || o.experts_per_token > o.num_experts) {
    throw ConfigError("model.moe.experts_per_token " + std::to_string(o.experts_per_token) +
                      " must be within 1..model.moe.num_experts (" + std::to_string(o.num_experts) + ")");
  }
  experts = register_module("experts", torch::nn::ModuleList());
  const auto hidden = static_cast<int64_t>(hidden_ratio * dim);
  for (int64_t e = 0; e < o.num_experts; ++e) experts->push_back(SwiGlu(dim, hidden));
  gate = register_module("gate", MoeGate(dim, o.num_experts));
  shared_experts = register_module("shared_experts", SwiGlu(dim, 2 * dim));
}

at::Tensor SparseMoeImpl::forward(const at::Tensor& x) {
  const int64_t dim = x.size(-1), k = options.experts_per_token, num_experts = options.num_experts;
  auto tokens = x.reshape({-1, dim});  // [M, D]
  const int64_t m = tokens.size(0);
  MoeRouting r;
  r.probabilities = gate->logits(tokens).softmax(-1);  // [M, E]
  std::tie(r.expert_weight, r.expert_index) = r.probabilities.topk(k, -1);

  // Group the M*k (token, choice) pairs by expert; a stable sort keeps token order within one.
  auto flat_expert = r.expert_index.reshape({-1});
  auto order = std::get<1>(at::sort(flat_expert, c10::optional<bool>(true), /*dim=*/0, false));
  auto counts = at::bincount(flat_expert, {}, num_experts).to(at::kCPU);  // one host sync
  std::vector<int64_t> count(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + num_experts);
  const int64_t capacity = options.capacity_factor > 0
                               ? static_cast<int64_t>(std::ceil(options.capacity_factor * m * k / num_experts))
                               : m * k;
  auto flat_weight = r.expert_weight.reshape({-1});
  auto y = at::zeros_like(tokens);
  std::vector<int64_t> kept(num_experts, 0);
  int64_t start = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t used = std::min(count[e], capacity);  // beyond capacity: dropped (shared only)
    kept[e] = used;
    if (used > 0) {
      auto pairs = order.narrow(0, start, used);
      auto rows = at::floor_divide(pairs, k);
      auto out = experts[e]->as<SwiGluImpl>()->forward(tokens.index_select(0, rows));
      out = out * flat_weight.index_select(0, pairs).unsqueeze(1).to(out.scalar_type());
      y = y.index_add(0, rows, out.to(y.scalar_type()));
    }
    start += count[e];
  }
  r.tokens_per_expert = at::tensor(kept, at::kLong);
  if (is_training() && options.aux_loss_weight > 0) {
    // f_i = E * (assignments to i) / (M k), from the router's choices before any capacity cut.
    auto f = counts.to(r.probabilities.device(), at::kFloat) * (static_cast<double>(num_experts) / (m * k));
    auto p = r.probabilities.to(at::kFloat).mean(0);
    r.aux_loss = (f * p).sum() * options.aux_loss_weight;
  }
  routing_ = std::move(r);
  return probe("mlp", (y + shared_experts->forward(tokens)).view(x.sizes()));
}

}  // namespace ditlab
