#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <cmath>

#include "models/registry.h"
#include "models/skip_dit/skip_dit.h"
#include "src/common/error.h"
#include "src/io/module_weights.h"

using namespace ditlab;

namespace {

ModelConfig tiny_skip(int64_t depth = 6) {
  ModelConfig c;
  c.name = "skip-dit";
  c.depth = depth;
  c.hidden_size = 32;
  c.num_heads = 2;
  c.patch_size = 2;
  c.input_size = 8;
  c.in_channels = 3;
  c.num_classes = 5;
  return c;
}

std::shared_ptr<SkipDiT> build(const ModelConfig& c) {
  auto model = std::dynamic_pointer_cast<SkipDiT>(build_backbone(c));
  REQUIRE(model);
  return model;
}

int64_t count_parameters(torch::nn::Module& m) {
  int64_t n = 0;
  for (auto& p : m.parameters()) n += p.numel();
  return n;
}

// Every parameter random, so that outputs depend on all of them.
void randomize(torch::nn::Module& m, double std = 0.2) {
  torch::NoGradGuard g;
  for (auto& p : m.named_parameters()) {
    if (p.key() != "pos_embed") p.value().normal_(0, std);
  }
}

// The wiring written out without a stack: decoder block i (i >= depth/2) first merges the output
// of encoder block depth-1-i. `reuse` replays Skip-Cache: blocks cache_depth..depth-cache_depth-1
// are skipped and `deep` (the kept input of block depth-cache_depth) is used in their place.
at::Tensor reference_forward(SkipDiT& m, const at::Tensor& x, const at::Tensor& t,
                             const at::Tensor& y, int64_t cache_depth = 0,
                             const at::Tensor& deep = {}, at::Tensor* deep_out = nullptr) {
  const int64_t depth = static_cast<int64_t>(m.blocks->size()), half = depth / 2;
  auto h = m.x_embedder->forward(x) + m.pos_embed;
  auto c = m.t_embedder->forward(t) + m.y_embedder->forward(y);
  std::vector<at::Tensor> outputs(depth);
  for (int64_t i = 0; i < depth; ++i) {
    const bool skipped = deep.defined() && i >= cache_depth && i < depth - cache_depth;
    if (skipped) continue;
    if (cache_depth > 0 && i == depth - cache_depth) {
      if (deep.defined()) h = deep;
      if (deep_out) *deep_out = h;
    }
    if (i >= half) {
      auto merged = at::cat({h, outputs[depth - 1 - i]}, -1);
      auto* norm = m.skip_norms[i - half]->as<torch::nn::LayerNorm>();
      auto* linear = m.skip_linears[i - half]->as<SkipLinearImpl>()->linear.get();
      merged = at::layer_norm(merged, {merged.size(-1)}, norm->weight, norm->bias, 1e-6);
      h = at::linear(merged, linear->weight, linear->bias);
    }
    h = m.blocks[i]->as<DiTBlockImpl>()->forward(h, c);
    outputs[i] = h;
  }
  return unpatchify(m.final_layer->forward(h, c), m.options().patch_size, m.shape().out_channels);
}

}  // namespace

TEST_CASE("Skip-DiT adds depth/2 skip norms and linears to DiT's parameters", "[skip_dit]") {
  for (const char* name : {"Skip-DiT-S/2", "Skip-DiT-B/4"}) {
    ModelConfig skip_config, dit_config;
    skip_config.name = name;
    dit_config.name = std::string(name).substr(5);  // DiT-S/2 ...
    for (auto* c : {&skip_config, &dit_config}) {
      c->input_size = 32;
      c->in_channels = 4;
      c->num_classes = 1000;
    }
    auto resolved = resolve_model_config(skip_config);
    const int64_t D = resolved.hidden_size;
    // Per skip: LayerNorm(2D) weight and bias, Linear(2D -> D) weight and bias.
    const int64_t skips = (resolved.depth / 2) * (2 * 2 * D + 2 * D * D + D);
    auto skip_model = build_backbone(skip_config);
    auto dit_model = build_backbone(dit_config);
    CAPTURE(name);
    CHECK(count_parameters(*skip_model) == count_parameters(*dit_model) + skips);
  }
}

TEST_CASE("Skip-DiT keeps DiT's keys and adds the official skip keys", "[skip_dit]") {
  auto model = build(tiny_skip());
  auto keys = state_dict(*model);
  CHECK(keys.count("blocks.5.attn.qkv.weight") == 1);
  CHECK(keys.count("final_layer.linear.weight") == 1);
  for (int i = 0; i < 3; ++i) {
    CHECK(keys.count("skip_norms." + std::to_string(i) + ".weight") == 1);
    CHECK(keys.count("skip_norms." + std::to_string(i) + ".bias") == 1);
    CHECK(keys.count("skip_linears." + std::to_string(i) + ".linear.weight") == 1);
    CHECK(keys.count("skip_linears." + std::to_string(i) + ".linear.bias") == 1);
  }
  CHECK(keys.count("skip_norms.3.weight") == 0);
  // Skip modules keep the default initialisation: U(+-1/sqrt(2D)) linears (not xavier, not zero)
  // and unit LayerNorms, as the official code builds them after initialize_weights().
  auto w = keys.at("skip_linears.0.linear.weight");
  const double bound = 1.0 / std::sqrt(64.0);
  CHECK(w.abs().max().item<double>() <= bound);
  CHECK(w.abs().max().item<double>() > 0.5 * bound);
  CHECK(keys.at("skip_linears.0.linear.bias").abs().sum().item<double>() > 0);
  CHECK(at::equal(keys.at("skip_norms.0.weight"), at::ones({64})));
  // An odd depth has no pairing.
  CHECK_THROWS_WITH(build_backbone(tiny_skip(5)), Catch::Contains("even depth"));
}

TEST_CASE("Skip-DiT pairs decoder block i with encoder block depth-1-i", "[skip_dit]") {
  for (int64_t depth : {2, 4, 6}) {
    auto model = build(tiny_skip(depth));
    randomize(*model);
    model->eval();
    torch::NoGradGuard no_grad;
    auto x = at::randn({3, 3, 8, 8});
    auto t = at::tensor({5, 500, 999}, at::kLong);
    auto y = at::tensor({0, 4, 5}, at::kLong);
    auto out = model->forward(x, t, y).out;
    CHECK(out.sizes() == at::IntArrayRef({3, 6, 8, 8}));
    CAPTURE(depth);
    CHECK(at::allclose(out, reference_forward(*model, x, t, y), 1e-5, 1e-5));
  }
}

TEST_CASE("Skip-Cache reuses the deep feature between full steps and clears at small t",
          "[skip_dit]") {
  auto model = build(tiny_skip(8));
  randomize(*model);
  model->eval();
  torch::NoGradGuard no_grad;
  auto y = at::tensor({1, 2}, at::kLong);
  auto x1 = at::randn({2, 3, 8, 8}), x2 = at::randn({2, 3, 8, 8}), x3 = at::randn({2, 3, 8, 8});
  auto t = [](int64_t v) { return at::full({2}, v, at::kLong); };
  model->begin_sampling({/*interval=*/2, /*depth=*/1});
  // Call 0: full, keeps the input of block 7. Call 1: blocks 0 and 7 only, with the kept feature.
  auto full = model->forward(x1, t(500), y).out;
  at::Tensor deep;
  CHECK(at::allclose(full, reference_forward(*model, x1, t(500), y, 1, {}, &deep), 1e-5, 1e-5));
  auto cached = model->forward(x2, t(480), y).out;
  CHECK(at::allclose(cached, reference_forward(*model, x2, t(480), y, 1, deep), 1e-5, 1e-5));
  CHECK_FALSE(at::allclose(cached, reference_forward(*model, x2, t(480), y), 1e-3, 1e-3));
  // Call 2 is full again.
  CHECK(at::allclose(model->forward(x3, t(460), y).out, reference_forward(*model, x3, t(460), y),
                     1e-5, 1e-5));
  // t <= 20 clears the cache: the next call (which would have been cached) runs in full.
  model->forward(x1, t(20), y);  // call 3 (cached), then cleared
  CHECK(at::allclose(model->forward(x2, t(10), y).out, reference_forward(*model, x2, t(10), y),
                     1e-5, 1e-5));
  model->end_sampling();
  // Outside sampling every call is full.
  CHECK(at::allclose(model->forward(x2, t(480), y).out, reference_forward(*model, x2, t(480), y),
                     1e-5, 1e-5));
  CHECK_THROWS_WITH(model->begin_sampling({2, 5}), Catch::Contains("sample.cache_depth 5"));
  CHECK_THROWS_WITH(model->begin_sampling({2, 4}), Catch::Contains("below half"));
  // DiT has no cache.
  ModelConfig dit = tiny_skip();
  dit.name = "dit";
  CHECK_THROWS_WITH(build_backbone(dit)->begin_sampling({3, 1}), Catch::Contains("no feature cache"));
  CHECK_NOTHROW(build_backbone(dit)->begin_sampling({1, 1}));
}
