#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>

#include "models/layers/rope2d.h"
#include "models/registry.h"
#include "models/udit/downsampled_attention.h"
#include "models/udit/rep_feed_forward.h"
#include "models/udit/udit.h"
#include "src/common/error.h"
#include "src/io/module_weights.h"

using namespace ditlab;

namespace {

ModelConfig tiny_udit(int64_t input_size = 16) {
  ModelConfig c;
  c.name = "u-dit";
  c.hidden_size = 16;
  c.num_heads = 2;
  c.level_depths = {1, 1, 2, 1, 1};
  c.input_size = input_size;
  c.in_channels = 3;
  c.num_classes = 5;
  return c;
}

std::shared_ptr<UDiT> build(const ModelConfig& c) {
  auto model = std::dynamic_pointer_cast<UDiT>(build_backbone(c));
  REQUIRE(model);
  return model;
}

void randomize(torch::nn::Module& m, double std = 0.2) {
  torch::NoGradGuard g;
  for (auto& p : m.parameters()) p.normal_(0, std);
}

int64_t count_parameters(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

// The official U-DiT's parameter count written out from its layer shapes (udit_models.py),
// independent of the module code. `inference`: each FFN folded (two 1x1 convs -> one, three
// depthwise convs + identity -> one 5x5), as the paper counts.
int64_t official_udit_parameters(int64_t C, int64_t heads, int64_t in = 4, int64_t classes = 1000,
                                 bool inference = true, std::vector<int64_t> depth = {2, 5, 8, 5, 2}) {
  auto embedders = [&](int64_t d) { return (256 * d + d) + (d * d + d) + (classes + 1) * d; };
  auto sub_layer = [&](int64_t d) {
    const int64_t h = 2 * d;  // mlp_ratio 2
    int64_t attn = (d * 25 + d) + (3 * d * d + 3 * d) + (d * d + d) + heads;  // dw, qkv, out, scale
    int64_t ffn = inference ? (d * h + h) + (h * 25 + h) + (h * d + d)
                            : (d * h / 2 + h / 2) + (h / 2 * h + h) + (h * 25 + h) + (h * 9 + h) +
                                  (h + h) + (h * h / 2 + h / 2) + (h / 2 * d + d);
    return attn + ffn + (6 * d * d + 6 * d);
  };
  auto block = [&](int64_t d) { return 2 * sub_layer(d); };
  int64_t n = (in * C * 9 + C) + embedders(C) + embedders(2 * C) + embedders(4 * C);
  n += depth[0] * block(C) + C * (C / 2) * 9;                   // encoder 1, down1_2
  n += depth[1] * block(2 * C) + 2 * C * C * 9;                 // encoder 2, down2_3
  n += depth[2] * block(4 * C) + 4 * C * 8 * C * 9;             // latent, up3_2
  n += (4 * C * 2 * C + 2 * C) + depth[3] * block(2 * C);       // reduce 2, decoder 2
  n += 2 * C * 4 * C * 9 + (2 * C * 2 * C + 2 * C);             // up2_1, reduce 1
  n += depth[4] * block(2 * C) + (2 * C * 2 * C * 9 + 2 * C);   // decoder 1, output
  n += (2 * C * 4 * C + 4 * C) + (2 * C * 2 * in * 9 + 2 * in); // final layer (learned sigma)
  return n;
}

}  // namespace

TEST_CASE("U-DiT parameter counts equal the paper's, counted in inference form", "[udit]") {
  // The paper (Table 2) in millions, to its two decimals.
  CHECK(std::llround(official_udit_parameters(96, 4) / 1e4) == 5205);
  CHECK(std::llround(official_udit_parameters(192, 8) / 1e4) == 20443);
  CHECK(std::llround(official_udit_parameters(384, 16) / 1e4) == 81019);
  // And the modules have exactly those shapes (U-DiT-S built; training and inference forms).
  ModelConfig s;
  s.name = "U-DiT-S";
  s.input_size = 32;
  s.in_channels = 4;
  s.num_classes = 1000;
  auto model = build(s);
  CHECK(model->inference_parameter_count() == official_udit_parameters(96, 4));
  CHECK(udit_parameter_count(model->options(), true) == model->inference_parameter_count());
  CHECK(udit_parameter_count(model->options(), false) == count_parameters(*model));
  CHECK(count_parameters(*model) == official_udit_parameters(96, 4, 4, 1000, false));
  CHECK(std::llround(count_parameters(*model) / 1e4) == 5890);  // 58.90M in training form
  auto tiny = build(tiny_udit());
  CHECK(count_parameters(*tiny) == official_udit_parameters(16, 2, 3, 5, false, {1, 1, 2, 1, 1}));
}

TEST_CASE("U-DiT keeps the official state-dict keys", "[udit]") {
  auto keys = state_dict(*build(tiny_udit()));
  for (const char* key :
       {"x_embedder.proj.weight", "t_embedder_3.mlp.2.weight", "y_embedder_2.embedding_table.weight",
        "encoder_level_1.0.attn1.downsampler.layer.weight", "encoder_level_1.0.attn2.to_qkv.bias",
        "latent.1.attn1.logit_scale", "latent.1.attn1.to_out.weight", "decoder_level_2.0.mlp1.project_in.1.weight",
        "decoder_level_1.0.mlp2.dwconv.2.weight", "decoder_level_1.0.mlp2.project_out.0.bias",
        "decoder_level_1.0.adaLN_modulation2.1.weight", "down1_2.body.0.weight", "up2_1.body.0.weight",
        "reduce_chan_level2.bias", "output.weight", "final_layer.out_proj.weight",
        "final_layer.adaLN_modulation.1.bias"}) {
    CAPTURE(key);
    CHECK(keys.count(key) == 1);
  }
  CHECK(keys.count("down1_2.body.0.bias") == 0);  // the resampling convs have no bias
  CHECK(at::allclose(keys.at("latent.0.attn1.logit_scale"), at::full({2, 1, 1}, std::log(10.0))));
}

TEST_CASE("U-DiT maps [N, C, H, W] to [N, 2C, H, W] at several sizes and starts at zero", "[udit]") {
  for (int64_t size : {8, 16, 32}) {
    auto model = build(tiny_udit(size));
    auto x = at::randn({2, 3, size, size});
    auto t = at::tensor({3, 700}, at::kLong), y = at::tensor({1, 5}, at::kLong);
    auto out = model->forward(x, t, y).out;
    CAPTURE(size);
    CHECK(out.sizes() == at::IntArrayRef({2, 6, size, size}));
    CHECK(out.abs().max().item<double>() == 0.0);  // zero-initialised final layer
    randomize(*model);
    out = model->forward(x, t, y).out;
    CHECK(out.abs().max().item<double>() > 0.0);
    CHECK(at::isfinite(out).all().item<bool>());
  }
  CHECK_THROWS_AS(build(tiny_udit(12)), ConfigError);  // not a multiple of 8
  auto model = build(tiny_udit(16));
  CHECK_THROWS_AS(model->forward(at::randn({1, 3, 8, 8}), at::tensor({1}, at::kLong),
                                 at::tensor({1}, at::kLong)),
                  ShapeError);
  auto bad = tiny_udit();
  bad.depth = 4;
  CHECK_THROWS_WITH(build_backbone(bad), Catch::Contains("model.level_depths"));
}

TEST_CASE("the polyphase split puts pixel (2i+dh, 2j+dw) in group 2dh+dw at token i*W/2+j", "[udit]") {
  // Each pixel's value encodes its row and column; one channel carries the row, one the column.
  const int64_t H = 6, W = 6;
  auto rows = at::arange(H, at::kFloat).view({H, 1}).expand({H, W});
  auto cols = at::arange(W, at::kFloat).view({1, W}).expand({H, W});
  auto x = at::stack({rows, cols}).unsqueeze(0);  // [1, 2, H, W]
  auto groups = polyphase_split(x);                // [1, 4, 9, 2]
  REQUIRE(groups.sizes() == at::IntArrayRef({1, 4, 9, 2}));
  for (int64_t dh = 0; dh < 2; ++dh) {
    for (int64_t dw = 0; dw < 2; ++dw) {
      for (int64_t i = 0; i < H / 2; ++i) {
        for (int64_t j = 0; j < W / 2; ++j) {
          auto token = groups[0][2 * dh + dw][i * (W / 2) + j];
          CHECK(token[0].item<float>() == 2 * i + dh);
          CHECK(token[1].item<float>() == 2 * j + dw);
        }
      }
    }
  }
  CHECK(at::equal(polyphase_merge(groups, H, W), x));
}

TEST_CASE("downsampled attention mixes tokens only within their sub-grid", "[udit]") {
  torch::manual_seed(3);
  DownsampledAttention attention(8, 2);
  randomize(*attention);
  {
    torch::NoGradGuard g;
    attention->downsampler->layer->weight.zero_();  // x' = x: no spatial mixing before the split
    attention->downsampler->layer->bias.zero_();
  }
  auto x = at::randn({1, 8, 8, 8});
  auto changed = x.clone();
  changed.index_put_({0, at::indexing::Slice(), 2, 4}, at::randn({8}));  // pixel (2, 4): group 0
  auto diff = (attention->forward(changed) - attention->forward(x)).abs().amax(1)[0];  // [8, 8]
  for (int64_t r = 0; r < 8; ++r) {
    for (int64_t c = 0; c < 8; ++c) {
      CAPTURE(r, c);
      if (r % 2 == 0 && c % 2 == 0) {
        CHECK(diff[r][c].item<double>() > 1e-6);  // same group: attends to the changed pixel
      } else {
        CHECK(diff[r][c].item<double>() < 1e-6);  // other groups never see it
      }
    }
  }
}

TEST_CASE("2-D RoPE rotates (x, y) interleaved pairs and depends on relative offsets", "[udit]") {
  const int64_t hd = 8, side = 3;
  auto angles = rope2d_angles(hd, side, at::TensorOptions());
  REQUIRE(angles.sizes() == at::IntArrayRef({9, 4}));
  // Token 5 is column 2, row 1; w_f = 10000^(-4f/8), f = 0, 1; pairs (x w0, y w0, x w1, y w1).
  const double w1 = std::pow(10000.0, -0.5);
  CHECK(angles[5][0].item<double>() == Approx(2.0));
  CHECK(angles[5][1].item<double>() == Approx(1.0));
  CHECK(angles[5][2].item<double>() == Approx(2.0 * w1));
  CHECK(angles[5][3].item<double>() == Approx(1.0 * w1));
  // q.k after rotation depends on positions only through their offset.
  auto q = at::randn({hd}), k = at::randn({hd});
  auto dot = [&](int64_t a, int64_t b) {
    auto rq = apply_rope2d(q.view({1, hd}).expand({9, hd}), angles)[a];
    auto rk = apply_rope2d(k.view({1, hd}).expand({9, hd}), angles)[b];
    return (rq * rk).sum().item<double>();
  };
  CHECK(dot(0, 4) == Approx(dot(4, 8)).margin(1e-5));  // both offsets (+1, +1)
  CHECK(dot(1, 3) == Approx(dot(2, 4)).margin(1e-5));  // both (-1, +1)
  CHECK(std::abs(dot(0, 4) - dot(0, 5)) > 1e-4);
}

TEST_CASE("the re-parameterised FFN equals the training form and never changes parameters", "[udit]") {
  torch::manual_seed(5);
  RepFeedForward ffn(8, 2.0);
  randomize(*ffn);
  std::vector<at::Tensor> before;
  for (const auto& p : ffn->parameters()) before.push_back(p.detach().clone());
  auto x = at::randn({2, 8, 6, 6});
  auto trained = ffn->forward(x);
  ffn->eval();
  torch::NoGradGuard no_grad;
  for (int repeat = 0; repeat < 3; ++repeat) {  // folding again must not accumulate
    CHECK(at::allclose(ffn->forward(x), trained, 1e-4, 1e-5));
    ffn->train();
    ffn->eval();
  }
  auto params = ffn->parameters();
  for (size_t i = 0; i < params.size(); ++i) CHECK(at::equal(params[i], before[i]));
  // A parameter changed while in eval mode (a checkpoint load, an EMA update) is picked up.
  ffn->dwconv[1]->as<torch::nn::Conv2dImpl>()->weight.add_(0.5);
  auto folded_after = ffn->forward(x);
  ffn->train();
  CHECK(at::allclose(folded_after, ffn->forward_training_form(x), 1e-4, 1e-5));
  CHECK_FALSE(at::allclose(folded_after, trained, 1e-3, 1e-3));
}

TEST_CASE("a U-DiT in eval mode (folded FFNs) gives the training-mode output", "[udit]") {
  auto model = build(tiny_udit());
  randomize(*model, 0.1);
  auto x = at::randn({2, 3, 16, 16});
  auto t = at::tensor({10, 900}, at::kLong), y = at::tensor({0, 5}, at::kLong);
  torch::NoGradGuard no_grad;
  auto training = model->forward(x, t, y).out;
  model->eval();
  CHECK(at::allclose(model->forward(x, t, y).out, training, 1e-4, 1e-4));
}

namespace {
// A U-DiT preset at the paper's 256x256 (a 32x32x4 latent, 1000 classes).
ModelConfig paper_preset(const char* name) {
  ModelConfig c;
  c.name = name;
  c.input_size = 32;
  c.in_channels = 4;
  c.num_classes = 1000;
  return c;
}
}  // namespace

TEST_CASE("U-DiT MACs match the paper's GFLOPs (folded FFNs, one MAC = one FLOP)", "[udit]") {
  // Table 2 of the paper at 256x256 (a 32x32x4 latent); the remainder is what the paper's
  // counter adds for elementwise operations (under 0.5%).
  for (const auto& [name, paper] : {std::pair<const char*, double>{"U-DiT-S", 6.04},
                                    {"U-DiT-B", 22.22}, {"U-DiT-L", 85.00}}) {
    auto resolved = resolve_model_config(paper_preset(name));
    UDiTOptions o;
    o.hidden_size = resolved.hidden_size;
    o.num_heads = resolved.num_heads;
    o.level_depths = resolved.level_depths;
    o.mlp_ratio = resolved.mlp_ratio;
    CAPTURE(name);
    CHECK(udit_forward_macs(o) / 1e9 == Approx(paper).epsilon(0.005));
    CHECK(udit_forward_macs(o) / 1e9 < paper);
  }
  // Training runs the FFNs unfolded (d -> h/2 -> h, three depthwise branches, h -> h/2 -> d):
  // about 1.2x. Expected: a separate recount of every layer of the training-form model (a
  // Python tally during review: 7.13, 26.51 and 102.03 G).
  for (const auto& [name, trained] : {std::pair<const char*, double>{"U-DiT-S", 7.13},
                                      {"U-DiT-B", 26.51}, {"U-DiT-L", 102.03}}) {
    CAPTURE(name);
    const ModelCost cost = model_cost(paper_preset(name));
    CHECK(cost.training_forward_macs / 1e9 == Approx(trained).epsilon(0.002));
    CHECK(cost.forward_macs < cost.training_forward_macs);
  }
  // The built model reports the same count.
  auto model = build(tiny_udit());
  UDiTOptions o;
  o.input_size = 16;
  o.in_channels = 3;
  o.hidden_size = 16;
  o.num_heads = 2;
  o.level_depths = {1, 1, 2, 1, 1};
  o.num_classes = 5;
  CHECK(model->forward_macs() == udit_forward_macs(o));
  CHECK(model->training_forward_macs() == udit_forward_macs(o, /*training_form=*/true));
}
