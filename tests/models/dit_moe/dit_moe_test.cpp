#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>

#include "models/dit/dit.h"
#include "models/dit_moe/sparse_moe.h"
#include "models/registry.h"
#include "src/common/error.h"
#include "src/io/module_weights.h"

using namespace ditlab;

namespace {
MoeOptions moe_options(int64_t experts, int64_t k, double capacity = 0.0, double alpha = 0.01) {
  MoeOptions o;
  o.num_experts = experts;
  o.experts_per_token = k;
  o.capacity_factor = capacity;
  o.aux_loss_weight = alpha;
  return o;
}

// A 2-block DiT-MoE with 4 experts on 8x8x3 inputs.
ModelConfig tiny_moe() {
  ModelConfig c;
  c.name = "dit-moe";
  c.depth = 2;
  c.hidden_size = 32;
  c.num_heads = 2;
  c.patch_size = 2;
  c.input_size = 8;
  c.in_channels = 3;
  c.num_classes = 5;
  c.moe.num_experts = 4;
  return c;
}

// The layer written as a loop over tokens: y_t = sum over its top-k experts of p * E(x_t) + S(x_t).
at::Tensor naive_moe(SparseMoeImpl& moe, const at::Tensor& x) {
  auto tokens = x.reshape({-1, x.size(-1)});
  auto probabilities = at::linear(tokens, moe.gate->weight).softmax(-1);
  auto out = at::zeros_like(tokens);
  for (int64_t t = 0; t < tokens.size(0); ++t) {
    auto [weights, experts] = probabilities[t].topk(moe.options.experts_per_token);
    auto row = moe.shared_experts->forward(tokens[t].unsqueeze(0))[0];
    for (int64_t j = 0; j < moe.options.experts_per_token; ++j) {
      auto* expert = moe.experts[experts[j].item<int64_t>()]->as<SwiGluImpl>();
      row = row + weights[j] * expert->forward(tokens[t].unsqueeze(0))[0];
    }
    out[t] = row;
  }
  return out.view(x.sizes());
}
}  // namespace

TEST_CASE("MoE dispatch equals a per-token loop over the chosen experts", "[dit_moe]") {
  torch::manual_seed(1);
  for (int64_t k : {1, 2, 3}) {
    SparseMoe moe(16, 4.0, moe_options(6, k));
    auto x = at::randn({3, 10, 16});
    auto y = moe->forward(x);
    CAPTURE(k);
    CHECK(at::allclose(y, naive_moe(*moe, x), 1e-5, 1e-6));
    const auto& r = moe->last_routing();
    CHECK(r.tokens_per_expert.sum().item<int64_t>() == 30 * k);
    // Weights are the router probabilities themselves, not renormalised over the top k.
    CHECK(at::allclose(r.expert_weight, r.probabilities.gather(1, r.expert_index)));
    if (k < 6) CHECK((r.expert_weight.sum(-1) < 1.0).all().item<bool>());
  }
}

TEST_CASE("the load-balancing loss is alpha * sum_i f_i P_i, by hand", "[dit_moe]") {
  torch::manual_seed(2);
  SparseMoe moe(8, 4.0, moe_options(4, 2, 0.0, 0.01));
  moe->forward(at::randn({2, 6, 8}));  // 12 tokens, 24 assignments
  const auto& r = moe->last_routing();
  REQUIRE(r.aux_loss.defined());
  double expected = 0;
  for (int64_t i = 0; i < 4; ++i) {
    double assigned = 0;
    for (int64_t t = 0; t < 12; ++t) {
      for (int64_t j = 0; j < 2; ++j) assigned += r.expert_index[t][j].item<int64_t>() == i;
    }
    const double f = 4 * assigned / 24.0;
    double p = 0;
    for (int64_t t = 0; t < 12; ++t) p += r.probabilities[t][i].item<double>() / 12.0;
    expected += f * p;
  }
  CHECK(r.aux_loss.item<double>() == Approx(0.01 * expected).epsilon(1e-5));
  // Uniform routing probabilities give exactly alpha (the balanced optimum of the loss).
  {
    torch::NoGradGuard g;
    moe->gate->weight.zero_();
  }
  moe->forward(at::randn({2, 6, 8}));
  CHECK(moe->last_routing().aux_loss.item<double>() == Approx(0.01).epsilon(1e-5));
  // No loss outside training.
  moe->eval();
  moe->forward(at::randn({1, 4, 8}));
  CHECK_FALSE(moe->last_routing().aux_loss.defined());
}

TEST_CASE("a capacity factor drops assignments beyond each expert's capacity", "[dit_moe]") {
  torch::manual_seed(3);
  SparseMoe moe(8, 4.0, moe_options(4, 2, 0.5));
  {
    torch::NoGradGuard g;
    moe->gate->weight.zero_();
    moe->gate->weight[0].fill_(1.0);  // every positive-sum token prefers expert 0
  }
  auto x = at::rand({1, 16, 8});      // positive: expert 0 wins everywhere
  moe->forward(x);
  // capacity = ceil(0.5 * 16 * 2 / 4) = 4 per expert.
  CHECK(moe->last_routing().tokens_per_expert[0].item<int64_t>() == 4);
  CHECK((moe->last_routing().tokens_per_expert <= 4).all().item<bool>());
}

TEST_CASE("experts without tokens get no gradient and break nothing", "[dit_moe]") {
  torch::manual_seed(4);
  SparseMoe moe(8, 4.0, moe_options(4, 1));
  {
    torch::NoGradGuard g;
    moe->gate->weight.zero_();
    moe->gate->weight[2].fill_(1.0);
  }
  auto x = at::rand({1, 5, 8});
  auto y = moe->forward(x);
  (y.sum() + moe->last_routing().aux_loss).backward();
  CHECK(moe->last_routing().tokens_per_expert[2].item<int64_t>() == 5);
  CHECK(moe->experts[2]->as<SwiGluImpl>()->up_proj->weight.grad().defined());
  CHECK_FALSE(moe->experts[0]->as<SwiGluImpl>()->up_proj->weight.grad().defined());
  CHECK(moe->gate->weight.grad().defined());  // through the weights and the aux loss
}

TEST_CASE("DiT-MoE parameter counts match the paper, total and activated", "[dit_moe]") {
  // The paper's Table 1 (millions of parameters, total / activated), counted analytically.
  const std::tuple<const char*, double, double> table[] = {
      {"DiT-MoE-S/2-8E2A", 199, 71}, {"DiT-MoE-S/2-16E2A", 369, 71}, {"DiT-MoE-B/2-8E2A", 795, 286},
      {"DiT-MoE-L/2-8E2A", 2800, 1000}, {"DiT-MoE-XL/2-8E2A", 4100, 1500}};
  for (const auto& [name, total, active] : table) {
    ModelConfig c;
    c.name = name;
    c.input_size = 32;
    c.in_channels = 4;
    c.num_classes = 1000;
    auto r = resolve_model_config(c);
    DiTOptions o;
    o.depth = r.depth;
    o.hidden_size = r.hidden_size;
    o.num_heads = r.num_heads;
    o.patch_size = r.patch_size;
    o.moe.num_experts = r.moe.num_experts;
    o.moe.experts_per_token = r.moe.experts_per_token;
    CAPTURE(name);
    // The paper rounds to 3 significant digits (2 for the billions).
    const double tolerance = total >= 1000 ? 0.03 : 0.01;
    CHECK(dit_parameter_count(o) / 1e6 == Approx(total).epsilon(tolerance));
    CHECK(dit_parameter_count(o, true) / 1e6 == Approx(active).epsilon(tolerance + 0.01));
  }
  // The analytic count equals the built modules (a small DiT-MoE and a dense DiT).
  ModelConfig small = tiny_moe();
  auto model = std::dynamic_pointer_cast<DiT>(build_backbone(small));
  REQUIRE(model);
  auto count = [](const DiT& m) {
    int64_t n = 0;
    for (const auto& p : m.parameters()) n += p.numel();
    return n;
  };
  CHECK(dit_parameter_count(model->options()) == count(*model));
  small.name = "dit";
  small.moe.num_experts = 0;
  small.moe.experts_per_token = 0;
  auto dense = std::dynamic_pointer_cast<DiT>(build_backbone(small));
  CHECK(dit_parameter_count(dense->options()) == count(*dense));
}

TEST_CASE("a DiT-MoE returns its load-balancing loss and expert loads, with official keys",
          "[dit_moe]") {
  ModelConfig c = tiny_moe();
  auto model = build_backbone(c);
  auto keys = state_dict(*model);
  for (const char* key : {"blocks.1.moe.gate.weight", "blocks.0.moe.experts.3.down_proj.weight",
                          "blocks.0.moe.shared_experts.gate_proj.weight"}) {
    CAPTURE(key);
    CHECK(keys.count(key) == 1);
  }
  CHECK(keys.count("blocks.0.mlp.fc1.weight") == 0);
  CHECK(keys.count("blocks.0.moe.experts.0.up_proj.bias") == 0);  // bias-free experts
  auto out = model->forward(at::randn({2, 3, 8, 8}), at::tensor({1, 2}, at::kLong),
                            at::tensor({0, 5}, at::kLong));
  REQUIRE(out.aux_loss.defined());
  CHECK(out.aux_loss.item<double>() > 0);
  CHECK(out.metrics.at("moe_tokens_per_expert.1").sum().item<int64_t>() == 2 * 16 * 2);
  ModelConfig dense = c;
  dense.name = "dit";
  CHECK_THROWS_WITH(build_backbone(dense), Catch::Contains("model.moe"));
}
