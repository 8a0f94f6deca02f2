#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>
#include <set>

#include "models/dit/dit.h"
#include "models/layers/embeddings.h"
#include "models/registry.h"
#include "src/common/error.h"
#include "src/io/module_weights.h"

using namespace ditlab;

namespace {

ModelConfig preset(const std::string& name, int64_t input_size = 32, int64_t in_channels = 4,
                   int64_t num_classes = 1000) {
  ModelConfig c;
  c.name = name;
  c.input_size = input_size;
  c.in_channels = in_channels;
  c.num_classes = num_classes;
  return c;
}

ModelConfig tiny(const std::string& conditioning = "adaln_zero") {
  ModelConfig c;
  c.name = "dit";
  c.depth = 2;
  c.hidden_size = 32;
  c.num_heads = 2;
  c.patch_size = 2;
  c.input_size = 8;
  c.in_channels = 3;
  c.num_classes = 5;
  c.conditioning = conditioning;
  return c;
}

int64_t count_parameters(torch::nn::Module& m) {
  int64_t n = 0;
  for (auto& p : m.parameters()) n += p.numel();
  return n;
}

// The parameter count of the official DiT written out term by term from its layer shapes
// (independent of the module code): embedders, blocks, final layer, pos_embed.
int64_t official_dit_parameters(int64_t depth, int64_t D, int64_t p, int64_t input, int64_t C,
                                int64_t classes, bool learn_sigma) {
  const int64_t T = (input / p) * (input / p), hidden = 4 * D, out = learn_sigma ? 2 * C : C;
  int64_t x_embedder = D * C * p * p + D;
  int64_t t_embedder = (256 * D + D) + (D * D + D);
  int64_t y_embedder = (classes + 1) * D;
  int64_t block = (3 * D * D + 3 * D) + (D * D + D) + (hidden * D + hidden) + (D * hidden + D) +
                  (6 * D * D + 6 * D);
  int64_t final_layer = (2 * D * D + 2 * D) + (p * p * out * D + p * p * out);
  return x_embedder + t_embedder + y_embedder + depth * block + final_layer + T * D;
}

// Every parameter random (the zero-initialised ones too), so that outputs depend on all of them.
void randomize(torch::nn::Module& m, double std = 0.2) {
  torch::NoGradGuard g;
  for (auto& p : m.named_parameters()) {
    if (p.key() != "pos_embed") p.value().normal_(0, std);
  }
}

}  // namespace

TEST_CASE("parameter counts follow the official layer shapes for every preset", "[dit]") {
  // Exact against the paper's DiT-XL/2 (675M) and the table of ../shared/spec (in millions).
  CHECK(official_dit_parameters(28, 1152, 2, 32, 4, 1000, true) == 675129632);
  struct Row {
    const char* name;
    double millions;
  };
  std::vector<Row> table = {{"DiT-S/8", 33.15}, {"DiT-S/4", 32.95}, {"DiT-S/2", 32.96},
                            {"DiT-B/8", 130.88}, {"DiT-B/4", 130.48}, {"DiT-B/2", 130.51},
                            {"DiT-L/8", 458.59}, {"DiT-L/4", 458.05}, {"DiT-L/2", 458.10},
                            {"DiT-XL/8", 675.68}, {"DiT-XL/4", 675.07}, {"DiT-XL/2", 675.13}};
  for (const auto& row : table) {
    auto c = resolve_model_config(preset(row.name));
    INFO(row.name);
    double m = official_dit_parameters(c.depth, c.hidden_size, c.patch_size, 32, 4, 1000, true) / 1e6;
    CHECK(m == Approx(row.millions).margin(0.006));
  }
  // And the modules themselves have exactly that many (small presets built for real).
  for (const char* name : {"DiT-S/2", "DiT-S/4", "DiT-S/8"}) {
    auto model = build_backbone(preset(name));
    auto c = resolve_model_config(preset(name));
    INFO(name);
    CHECK(count_parameters(*model) ==
          official_dit_parameters(c.depth, c.hidden_size, c.patch_size, 32, 4, 1000, true));
  }
  auto custom = tiny();
  CHECK(count_parameters(*build_backbone(custom)) ==
        official_dit_parameters(2, 32, 2, 8, 3, 5, true));
}

TEST_CASE("state-dict keys are the official ones", "[dit]") {
  auto model = build_backbone(preset("DiT-S/2", 16));
  auto keys = state_dict(*model);
  for (const char* key :
       {"x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight",
        "t_embedder.mlp.2.bias", "y_embedder.embedding_table.weight", "pos_embed",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.11.mlp.fc1.weight",
        "blocks.11.mlp.fc2.bias", "blocks.0.adaLN_modulation.1.weight",
        "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias"}) {
    INFO(key);
    CHECK(keys.count(key) == 1);
  }
  // x_embedder 2, t_embedder 4, y_embedder 1, pos_embed 1, 12 blocks x 10, final layer 4.
  CHECK(keys.size() == 2 + 4 + 1 + 1 + 12 * 10 + 4);
  CHECK(keys["y_embedder.embedding_table.weight"].size(0) == 1001);  // + the null class
  CHECK(keys["blocks.0.adaLN_modulation.1.weight"].sizes() == at::IntArrayRef({6 * 384, 384}));
  CHECK(keys["final_layer.linear.weight"].sizes() == at::IntArrayRef({2 * 2 * 8, 384}));
  CHECK_FALSE(keys["pos_embed"].requires_grad());
}

TEST_CASE("every preset maps [N, C, H, W] to [N, 2C, H, W] and starts at exactly zero", "[dit]") {
  for (const char* name : {"DiT-S/2", "DiT-S/4", "DiT-S/8", "DiT-B/8"}) {
    INFO(name);
    auto model = build_backbone(preset(name, 16));
    auto out = model->forward(at::randn({2, 4, 16, 16}), at::tensor({3, 999}), at::tensor({1, 1000}));
    CHECK(out.out.sizes() == at::IntArrayRef({2, 8, 16, 16}));
    CHECK(out.out.abs().max().item<double>() == 0.0);  // adaLN-Zero and the zeroed final layer
    CHECK_FALSE(out.aux_loss.defined());
  }
  auto c = tiny();
  c.learn_sigma = false;
  CHECK(build_backbone(c)->forward(at::randn({1, 3, 8, 8}), at::tensor({1}), at::tensor({0}))
            .out.size(1) == 3);
}

TEST_CASE("each conditioning variant builds, trains and responds to t and y", "[dit]") {
  for (const char* variant : {"adaln_zero", "adaln", "cross_attention", "in_context"}) {
    INFO(variant);
    at::manual_seed(3);
    auto model = build_backbone(tiny(variant));
    randomize(*model);
    auto x = at::randn({2, 3, 8, 8});
    auto t = at::tensor({10, 10}), y = at::tensor({1, 1});
    auto base = model->forward(x, t, y).out;
    CHECK(base.sizes() == at::IntArrayRef({2, 6, 8, 8}));
    CHECK(base.isfinite().all().item<bool>());
    CHECK((model->forward(x, at::tensor({500, 500}), y).out - base).abs().max().item<double>() > 1e-4);
    CHECK((model->forward(x, t, at::tensor({4, 4})).out - base).abs().max().item<double>() > 1e-4);
    // Every trainable parameter receives a gradient.
    model->forward(x, t, y).out.pow(2).mean().backward();
    for (auto& p : model->named_parameters()) {
      if (!p.value().requires_grad()) continue;
      INFO(p.key());
      REQUIRE(p.value().grad().defined());
      CHECK(p.value().grad().abs().sum().item<double>() > 0);
    }
  }
  CHECK_THROWS_AS(build_backbone(tiny("film")), ConfigError);
}

TEST_CASE("the 2-D sin-cos position embedding matches MAE's formula", "[dit]") {
  const int64_t dim = 16, grid = 3;
  auto pe = sincos_pos_embed_2d(dim, grid);
  REQUIRE(pe.sizes() == at::IntArrayRef({grid * grid, dim}));
  for (int64_t row = 0; row < grid; ++row) {
    for (int64_t col = 0; col < grid; ++col) {
      for (int64_t k = 0; k < dim / 4; ++k) {
        double omega = 1.0 / std::pow(10000.0, static_cast<double>(k) / (dim / 4));
        int64_t token = row * grid + col;
        // First half: the column (x); second half: the row (y); each [sin | cos].
        CHECK(pe[token][k].item<double>() == Approx(std::sin(col * omega)).margin(1e-6));
        CHECK(pe[token][dim / 4 + k].item<double>() == Approx(std::cos(col * omega)).margin(1e-6));
        CHECK(pe[token][dim / 2 + k].item<double>() == Approx(std::sin(row * omega)).margin(1e-6));
        CHECK(pe[token][3 * dim / 4 + k].item<double>() == Approx(std::cos(row * omega)).margin(1e-6));
      }
    }
  }
}

TEST_CASE("the timestep embedding puts cos before sin", "[dit]") {
  auto e = timestep_frequency_embedding(at::tensor({0.0, 2.0}), 8);
  CHECK(e[0][0].item<double>() == 1.0);  // cos(0)
  CHECK(e[0][4].item<double>() == 0.0);  // sin(0)
  double f1 = std::exp(-std::log(10000.0) * 1 / 4);
  CHECK(e[1][1].item<double>() == Approx(std::cos(2 * f1)));
  CHECK(e[1][5].item<double>() == Approx(std::sin(2 * f1)));
}

TEST_CASE("unpatchify inverts patchify with (p_row, p_col, channel) per token", "[dit]") {
  DiTOptions o;
  o.input_size = 8;
  o.patch_size = 2;
  o.in_channels = 3;
  o.hidden_size = 16;
  o.depth = 1;
  o.num_heads = 2;
  o.num_classes = 2;
  o.learn_sigma = false;
  DiT dit(o);
  auto x = at::randn({2, 3, 8, 8});
  // Patchify by hand: token (i, j) holds x[c, 2i + pr, 2j + pc] at position (pr * 2 + pc) * 3 + c.
  auto tokens = at::empty({2, 16, 12});
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j)
      for (int pr = 0; pr < 2; ++pr)
        for (int pc = 0; pc < 2; ++pc)
          for (int c = 0; c < 3; ++c)
            tokens.select(1, i * 4 + j).select(1, (pr * 2 + pc) * 3 + c)
                .copy_(x.select(1, c).select(1, 2 * i + pr).select(1, 2 * j + pc));
  CHECK(at::equal(unpatchify(tokens, o.patch_size, dit.shape().out_channels), x));
}

TEST_CASE("forward_with_cfg guides the chosen channels and leaves the rest", "[dit]") {
  at::manual_seed(4);
  auto model = build_backbone(tiny());
  randomize(*model);
  model->eval();
  auto half = at::randn({2, 3, 8, 8});
  auto x = at::cat({half, half});
  auto t = at::tensor({7, 8, 7, 8});
  auto y = at::tensor({1, 2, 5, 5});  // conditional half, then the null class
  auto raw = model->forward(x, t, y).out;
  auto cond = raw.narrow(0, 0, 2), uncond = raw.narrow(0, 2, 2);
  // Scale 1: the conditional prediction on the guided channels.
  auto one = model->forward_with_cfg(x, t, y, 1.0, 0);
  CHECK(at::allclose(one.narrow(0, 0, 2).narrow(1, 0, 3), cond.narrow(1, 0, 3), 1e-5, 1e-6));
  // Scale 4 on the first 2 channels only (the official code guides 3 of 4).
  auto g = model->forward_with_cfg(x, t, y, 4.0, 2);
  auto expected = uncond.narrow(1, 0, 2) + 4.0 * (cond.narrow(1, 0, 2) - uncond.narrow(1, 0, 2));
  CHECK(at::allclose(g.narrow(0, 0, 2).narrow(1, 0, 2), expected, 1e-4, 1e-5));
  CHECK(at::allclose(g.narrow(0, 2, 2).narrow(1, 0, 2), expected, 1e-4, 1e-5));
  CHECK(at::allclose(g.narrow(1, 2, 4), raw.narrow(1, 2, 4), 1e-5, 1e-6));  // unguided, per half
  CHECK_THROWS_AS(model->forward_with_cfg(x.narrow(0, 0, 3), t.narrow(0, 0, 3), y.narrow(0, 0, 3), 2.0, 0),
                  ShapeError);
}

TEST_CASE("the registry resolves presets, fills sizes and lists names on a miss", "[dit]") {
  auto c = resolve_model_config(preset("DiT-XL/2"));
  CHECK(c.depth == 28);
  CHECK(c.hidden_size == 1152);
  CHECK(c.num_heads == 16);
  CHECK(c.patch_size == 2);
  auto overridden = preset("DiT-S/2");
  overridden.depth = 3;
  CHECK(resolve_model_config(overridden).depth == 3);
  try {
    build_backbone(preset("DiT-M/2"));
    FAIL("expected an error");
  } catch (const ConfigError& e) {
    CHECK_THAT(e.what(), Catch::Contains("DiT-M/2"));
    CHECK_THAT(e.what(), Catch::Contains("DiT-XL/2"));
  }
  auto family = preset("dit");
  CHECK_THROWS_WITH(resolve_model_config(family), Catch::Contains("model.hidden_size is not set"));
  auto bad = tiny();
  bad.input_size = 9;
  CHECK_THROWS_WITH(build_backbone(bad), Catch::Contains("not divisible"));
  bad = tiny();
  bad.num_heads = 3;
  CHECK_THROWS_WITH(build_backbone(bad), Catch::Contains("num_heads"));
}

TEST_CASE("a width the heads or the sin-cos embedding cannot split is a ConfigError naming it",
          "[dit]") {
  // 190 = 5 x 38 suits 5 heads, but not the 2-D sin-cos position embedding (4 quarters).
  auto c = tiny();
  c.hidden_size = 190;
  c.num_heads = 5;
  // model_cost is what `dit flops` prints; it prices nothing the constructor would refuse.
  CHECK_THROWS_AS(model_cost(c), ConfigError);
  CHECK_THROWS_WITH(model_cost(c), Catch::Contains("model.hidden_size 190") &&
                                       Catch::Contains("multiple of 4"));
  CHECK_THROWS_AS(build_backbone(c), ConfigError);
  CHECK_THROWS_WITH(build_backbone(c), Catch::Contains("model.hidden_size 190"));
  DiTOptions o;
  o.hidden_size = 190;
  o.num_heads = 5;
  CHECK_THROWS_AS(DiT(o), ConfigError);
  // 32 channels do not split into 3 heads.
  c.hidden_size = 32;
  c.num_heads = 3;
  for (const char* family : {"dit", "skip-dit"}) {
    c.name = family;
    CHECK_THROWS_AS(model_cost(c), ConfigError);
    CHECK_THROWS_WITH(model_cost(c), Catch::Contains("model.hidden_size 32") &&
                                         Catch::Contains("model.num_heads 3"));
    CHECK_THROWS_AS(build_backbone(c), ConfigError);
  }
}

TEST_CASE("a wrong input shape is a ShapeError, not a crash", "[dit]") {
  auto model = build_backbone(tiny());
  CHECK_THROWS_AS(model->forward(at::randn({1, 4, 8, 8}), at::tensor({1}), at::tensor({0})), ShapeError);
  CHECK_THROWS_AS(model->forward(at::randn({1, 3, 16, 16}), at::tensor({1}), at::tensor({0})), ShapeError);
}

TEST_CASE("DiT MACs match the paper's Gflops for every preset it reports", "[dit]") {
  // The DiT paper (and the spec's table) at 256x256: a 32x32x4 latent, learned sigma.
  const std::pair<const char*, double> table[] = {
      {"DiT-S/8", 0.36}, {"DiT-S/4", 1.41}, {"DiT-S/2", 6.06},  {"DiT-B/2", 23.01},
      {"DiT-L/4", 19.70}, {"DiT-L/2", 80.71}, {"DiT-XL/2", 118.64}};
  for (const auto& [name, paper] : table) {
    auto c = resolve_model_config(preset(name));
    DiTOptions o;
    o.depth = c.depth;
    o.hidden_size = c.hidden_size;
    o.num_heads = c.num_heads;
    o.patch_size = c.patch_size;
    CAPTURE(name);
    // Within the paper's rounding (two decimals) plus what its counter adds for norms (<0.05%).
    CHECK(std::abs(dit_forward_macs(o) / 1e9 - paper) < 0.005 + 5e-4 * paper);
  }
  // The built model reports the same count.
  auto model = build_backbone(tiny());
  DiTOptions o;
  o.depth = 2;
  o.hidden_size = 32;
  o.num_heads = 2;
  o.patch_size = 2;
  o.input_size = 8;
  o.in_channels = 3;
  o.num_classes = 5;
  CHECK(model->forward_macs() == dit_forward_macs(o));
}
