#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <map>
#include <string>

#include "models/backbone.h"
#include "models/dit/dit.h"
#include "models/mup/parametrization.h"
#include "models/mup/width_roles.h"
#include "models/registry.h"
#include "src/common/error.h"

using namespace ditlab;

namespace {

// A small model of every family (and every DiT conditioning) at `width`.
std::map<std::string, ModelConfig> small_models(int64_t width) {
  auto base = [&](const std::string& name) {
    ModelConfig c;
    c.name = name;
    c.hidden_size = width;
    c.input_size = 8;
    c.in_channels = 1;
    c.num_classes = 3;
    return c;
  };
  std::map<std::string, ModelConfig> out;
  for (const char* conditioning : {"adaln_zero", "adaln", "cross_attention", "in_context"}) {
    ModelConfig c = base("dit");
    c.depth = 2, c.num_heads = 2, c.patch_size = 2, c.conditioning = conditioning;
    out[std::string("dit/") + conditioning] = c;
  }
  ModelConfig skip = base("skip-dit");
  skip.depth = 2, skip.num_heads = 2, skip.patch_size = 2;
  out["skip-dit"] = skip;
  ModelConfig moe = base("dit-moe");
  moe.depth = 1, moe.num_heads = 2, moe.patch_size = 2, moe.moe.num_experts = 3;
  out["dit-moe"] = moe;
  ModelConfig udit = base("u-dit");
  udit.num_heads = 2, udit.level_depths = {1, 1, 1, 1, 1};
  out["u-dit"] = udit;
  ModelConfig dim = base("dim");
  dim.depth = 3, dim.patch_size = 2;
  out["dim"] = dim;
  return out;
}

std::map<std::string, WidthRole> roles_of(const std::vector<ParamWidth>& table) {
  std::map<std::string, WidthRole> out;
  for (const auto& p : table) out[p.name] = p.role;
  return out;
}

ModelConfig with_mup(ModelConfig c, int64_t base_width) {
  c.mup.enabled = true;
  c.mup.base_width = base_width;
  return c;
}

double std_of(const at::Tensor& t) { return t.std().item<double>(); }

}  // namespace

TEST_CASE("every backbone declares a width role for each trainable parameter, and how its shape grows fits the role", "[mup]") {
  const auto narrow = small_models(16), wide = small_models(32);
  for (const auto& [family, config] : narrow) {
    INFO(family);
    auto small = build_backbone(config);
    auto big = build_backbone(wide.at(family));
    // width_table checks completeness and, since the widths differ, that the dimensions that
    // grew are the role's: the shape comparison is microsoft/mup's own inference of roles.
    const auto table = width_table(*big, *small);
    int64_t trainable = 0;
    for (const auto& p : big->parameters()) trainable += p.requires_grad() ? 1 : 0;
    CHECK(static_cast<int64_t>(table.size()) == trainable);
    std::map<WidthRole, int> count;
    for (const auto& p : table) ++count[p.role];
    CHECK(count[WidthRole::kInput] >= 2);  // patch or pixel embedding, label table, timestep MLP
    CHECK(count[WidthRole::kHidden] >= 3);
    CHECK(count[WidthRole::kOutput] >= 1);
  }
  auto roles = [&](const std::string& family) {
    return roles_of(width_table(*build_backbone(wide.at(family)), *build_backbone(narrow.at(family))));
  };
  const auto dit = roles("dit/adaln_zero");
  CHECK(dit.at("x_embedder.proj.weight") == WidthRole::kInput);
  CHECK(dit.at("y_embedder.embedding_table.weight") == WidthRole::kInput);
  CHECK(dit.at("t_embedder.mlp.0.weight") == WidthRole::kInput);
  CHECK(dit.at("t_embedder.mlp.2.weight") == WidthRole::kHidden);
  CHECK(dit.at("blocks.0.attn.qkv.weight") == WidthRole::kHidden);
  CHECK(dit.at("blocks.0.adaLN_modulation.1.weight") == WidthRole::kHidden);
  CHECK(dit.at("blocks.0.attn.qkv.bias") == WidthRole::kVector);
  CHECK(dit.at("final_layer.linear.weight") == WidthRole::kOutput);
  CHECK(dit.count("pos_embed") == 0);  // fixed, not trained
  const auto moe = roles("dit-moe");
  CHECK(moe.at("blocks.0.moe.gate.weight") == WidthRole::kOutput);  // the router
  CHECK(moe.at("blocks.0.moe.experts.2.down_proj.weight") == WidthRole::kHidden);
  const auto udit = roles("u-dit");
  CHECK(udit.at("final_layer.out_proj.weight") == WidthRole::kOutput);
  CHECK(udit.at("encoder_level_1.0.mlp1.dwconv.0.weight") == WidthRole::kVector);  // depthwise
  CHECK(udit.at("latent.0.attn1.logit_scale") == WidthRole::kVector);
  const auto dim = roles("dim");
  CHECK(dim.at("final_linear.weight") == WidthRole::kOutput);
  CHECK(dim.at("blocks.0.mixer.x_proj.weight") == WidthRole::kHidden);  // dt_rank grows too
  CHECK(dim.at("blocks.0.mixer.conv1d.weight") == WidthRole::kVector);
  CHECK(dim.at("blocks.0.mixer.A_log") == WidthRole::kVector);
  CHECK(dim.at("pos_embed") == WidthRole::kVector);
}

namespace {
// A backbone whose middle layer is wrongly declared input-like: its fan-in grows with width.
class MisdeclaredNet : public Backbone {
 public:
  explicit MisdeclaredNet(int64_t width) {
    first = register_module("first", torch::nn::Linear(4, width));
    middle = register_module("middle", torch::nn::Linear(width, width));
  }
  BackboneOutput forward(const at::Tensor& x, const at::Tensor&, const at::Tensor&) override { return {x, {}, {}}; }
  BackboneShape shape() const override { return {}; }
  int64_t forward_macs() const override { return 0; }
  void declare_width_roles(WidthRoles& roles) const override {
    roles.layer("first", WidthRole::kInput, InitLaw::kFanIn);
    roles.layer("middle", WidthRole::kInput, InitLaw::kFanIn);
  }
  torch::nn::Linear first{nullptr}, middle{nullptr};
};
}  // namespace

TEST_CASE("a role that does not fit how the parameter grows, or a missing role, is an error naming the parameter", "[mup]") {
  MisdeclaredNet small(8), big(16);
  CHECK_THROWS_WITH(width_table(big, small),
                    Catch::Contains("middle.weight") && Catch::Contains("declared input") &&
                        Catch::Contains("[8, 8]") && Catch::Contains("[16, 16]"));
  CHECK_NOTHROW(width_table(small, small));  // the same width: nothing to compare

  ModelConfig c = small_models(16).at("dit/adaln_zero");
  c.mup.enabled = true;  // no base width
  CHECK_THROWS_WITH(build_backbone(c), Catch::Contains("model.mup.base_width"));
  c.mup.base_width = 15;  // not divisible by the 2 heads
  CHECK_THROWS_WITH(build_backbone(c), Catch::Contains("model.mup.base_width 15") &&
                                           Catch::Contains("cannot be built"));
  ModelConfig dim = small_models(16).at("dim");
  dim.mup.enabled = true, dim.mup.base_width = 8, dim.mup.base_num_heads = 2;
  CHECK_THROWS_WITH(build_backbone(dim), Catch::Contains("mup.base_num_heads"));
}

TEST_CASE("at its base width a µP model is the standard model bit for bit", "[mup]") {
  for (const auto& [family, config] : small_models(16)) {
    INFO(family);
    at::manual_seed(3);
    auto sp = build_backbone(config);
    at::manual_seed(3);
    auto mup = build_backbone(with_mup(config, 16));
    const auto sp_params = sp->named_parameters();
    for (const auto& item : mup->named_parameters()) {
      INFO(item.key());
      CHECK(at::equal(item.value(), sp_params[item.key()]));
    }
    at::manual_seed(4);
    auto x = at::randn({2, 1, 8, 8});
    auto t = at::tensor({5, 700}, at::kLong), y = at::tensor({0, 2}, at::kLong);
    // The generator is where it would be without µP: the base model was not drawn from it.
    CHECK(at::equal(sp->forward(x, t, y).out, mup->forward(x, t, y).out));
  }
}

TEST_CASE("µP scales initialisation, readout and attention logits with the width multiplier", "[mup]") {
  // DiT at 4x its base width, heads fixed (head_dim grows 4x).
  ModelConfig base = small_models(32).at("dit/adaln");
  base.patch_size = 4;
  ModelConfig wide = base;
  wide.hidden_size = 128;
  at::manual_seed(0);
  auto sp_base = build_backbone(base);
  at::manual_seed(0);
  auto sp = build_backbone(wide);
  at::manual_seed(0);
  auto mup_model = build_backbone(with_mup(wide, 32));
  auto* dit = dynamic_cast<DiT*>(mup_model.get());
  REQUIRE(dit != nullptr);
  auto p = mup_model->named_parameters();
  auto s = sp->named_parameters();
  auto b = sp_base->named_parameters();
  // Input weights keep the base width's scale (xavier over [D, C p^2]: sqrt(2 / (16 + D))).
  CHECK(std_of(p["x_embedder.proj.weight"]) == Approx(std::sqrt(2.0 / (16 + 32))).epsilon(0.05));
  CHECK(std_of(s["x_embedder.proj.weight"]) == Approx(std::sqrt(2.0 / (16 + 128))).epsilon(0.05));
  // Hidden weights: variance 1 / fan-in, which xavier already gives: unchanged from SP...
  CHECK(at::equal(p["blocks.0.attn.qkv.weight"], s["blocks.0.attn.qkv.weight"]));
  // ...but a hidden weight drawn N(0, 0.02) at every width shrinks by sqrt(4).
  CHECK(std_of(p["t_embedder.mlp.2.weight"]) == Approx(0.01).epsilon(0.05));
  CHECK(std_of(b["t_embedder.mlp.2.weight"]) == Approx(0.02).epsilon(0.05));
  // The readout's input is scaled by output_mult / 4; the attention logits by sqrt(8) / 32
  // (attn_mult = sqrt(base head_dim 8) over head_dim 32), i.e. 1/sqrt(32) times 1/2.
  CHECK(dit->final_layer->linear->readout_multiplier == 0.25);
  CHECK(dit->blocks[0]->as<DiTBlockImpl>()->attn->logit_multiplier == Approx(0.5));
  // The optimizer scaling of hidden weights: lr / 4, weight decay * 4; others untouched.
  CHECK(mup_model->optimizer_scaling("blocks.0.mlp.fc1.weight").lr == 0.25);
  CHECK(mup_model->optimizer_scaling("blocks.0.mlp.fc1.weight").weight_decay == 4.0);
  CHECK(mup_model->optimizer_scaling("blocks.0.mlp.fc1.bias").lr == 1.0);
  CHECK(mup_model->optimizer_scaling("final_layer.linear.weight").lr == 1.0);

  // Widening by heads at a fixed head_dim (DiT-µP's way) leaves the attention scale alone;
  // an explicit attn_mult gives attn_mult / head_dim.
  ModelConfig by_heads = with_mup(wide, 32);
  by_heads.num_heads = 8;
  by_heads.mup.base_num_heads = 2;
  auto heads_model = build_backbone(by_heads);
  CHECK(dynamic_cast<DiT*>(heads_model.get())->blocks[0]->as<DiTBlockImpl>()->attn->logit_multiplier == 1.0);
  by_heads.mup.attn_mult = 8.0;
  auto explicit_model = build_backbone(by_heads);
  CHECK(dynamic_cast<DiT*>(explicit_model.get())->blocks[0]->as<DiTBlockImpl>()->attn->logit_multiplier ==
        Approx(8.0 / 4.0));  // 8 / head_dim 16 = logit_multiplier / sqrt(16)

  // DiT-MoE's router (PyTorch's default init, fan-in D) keeps the base width's scale.
  ModelConfig moe = small_models(32).at("dit-moe");
  ModelConfig moe_wide = moe;
  moe_wide.hidden_size = 128;
  auto router_base = build_backbone(moe)->named_parameters()["blocks.0.moe.gate.weight"];
  auto router = build_backbone(with_mup(moe_wide, 32))->named_parameters()["blocks.0.moe.gate.weight"];
  CHECK(std_of(router) == Approx(std_of(router_base)).epsilon(0.2));
  CHECK(std_of(router) == Approx(1.0 / std::sqrt(3.0 * 32)).epsilon(0.2));
}

TEST_CASE("a readout multiplier scales the readout's input, not its bias", "[mup]") {
  at::manual_seed(1);
  Linear readout(8, 3);
  auto x = at::randn({5, 8});
  readout->readout_multiplier = 0.25;
  auto expected = at::matmul(x * 0.25, readout->weight.t()) + readout->bias;
  CHECK(at::allclose(readout->forward(x), expected, 1e-6, 1e-6));
}

TEST_CASE("µP special cases: the router ignores output_mult, default-initialised biases keep their base scale, DiM's skip layout follows the base width", "[mup]") {
  ModelConfig moe = small_models(32).at("dit-moe");
  moe.hidden_size = 128;
  moe = with_mup(moe, 32);
  moe.mup.output_mult = 2.0;
  auto model = build_backbone(moe);
  auto* dit = dynamic_cast<DiT*>(model.get());
  CHECK(dit->final_layer->linear->readout_multiplier == 0.5);                        // 2 / 4
  CHECK(dit->blocks[0]->as<DiTBlockImpl>()->moe->gate->readout_multiplier == 0.25);  // 1 / 4

  // Skip-DiT's skip linears keep PyTorch's default init (bias U(+-1/sqrt(2D))): under µP the
  // bias keeps the base width's scale, 1/sqrt(3 * 64).
  ModelConfig skip = small_models(32).at("skip-dit");
  skip.hidden_size = 256;
  skip.depth = 2;
  auto bias = build_backbone(with_mup(skip, 32))->named_parameters()["skip_linears.0.linear.bias"];
  CHECK(std_of(bias) == Approx(1.0 / std::sqrt(3.0 * 64)).epsilon(0.2));
  auto sp_bias = build_backbone(skip)->named_parameters()["skip_linears.0.linear.bias"];
  CHECK(std_of(sp_bias) == Approx(1.0 / std::sqrt(3.0 * 512)).epsilon(0.2));

  // DiM merges skips with two DxD linears above D = 512; a µP model keeps its base's layout.
  ModelConfig dim = small_models(32).at("dim");
  dim.hidden_size = 544;
  auto wide_sp = build_backbone(dim)->named_parameters();
  CHECK(wide_sp.contains("skip_linears.0.linear_a.weight"));
  auto wide_mup = build_backbone(with_mup(dim, 32))->named_parameters();
  CHECK(wide_mup.contains("skip_linears.0.linear.weight"));
  CHECK(wide_mup["skip_linears.0.linear.weight"].size(1) == 2 * 544);
}

TEST_CASE("DiM's x_proj rows for B and C are initialised as a readout under µP", "[mup]") {
  // At m = 4 the dt rows (hidden) keep SP's 1/sqrt(fan_in) scale; the B and C rows (fixed
  // fan-out) get a further 1/sqrt(4): variance 1/fan_in^2 relative to the base.
  ModelConfig dim = small_models(32).at("dim");
  dim.hidden_size = 128;
  at::manual_seed(5);
  auto sp = build_backbone(dim)->named_parameters()["blocks.0.mixer.x_proj.weight"];
  at::manual_seed(5);
  auto mup = build_backbone(with_mup(dim, 32))->named_parameters()["blocks.0.mixer.x_proj.weight"];
  const int64_t dt_rank = 128 / 16, d_state = 16;
  REQUIRE(mup.size(0) == dt_rank + 2 * d_state);
  CHECK(at::equal(mup.narrow(0, 0, dt_rank), sp.narrow(0, 0, dt_rank)));
  CHECK(at::allclose(mup.narrow(0, dt_rank, 2 * d_state), sp.narrow(0, dt_rank, 2 * d_state) * 0.5));
}

TEST_CASE("weights move between parametrizations only where the forward multipliers agree", "[mup]") {
  ModelConfig sp;
  sp.name = "dit";
  sp.hidden_size = 64;
  sp.num_heads = 2;
  ModelConfig at_base = sp;
  at_base.mup.enabled = true;
  at_base.mup.base_width = 64;
  ModelConfig wide = sp;  // the same shapes, µP from a base of 32: readout x 1/2, other logits
  wide.mup.enabled = true;
  wide.mup.base_width = 32;
  CHECK(forward_is_standard(sp));
  CHECK(forward_is_standard(at_base));
  CHECK_FALSE(forward_is_standard(wide));
  // At its base shape with unit multipliers µP is SP; the explicit default attn_mult too.
  at_base.mup.attn_mult = std::sqrt(32.0);  // sqrt(head_dim 64 / 2)
  CHECK(forward_is_standard(at_base));
  ModelConfig other_heads = at_base;
  other_heads.mup.base_num_heads = 4;
  CHECK_FALSE(forward_is_standard(other_heads));
  ModelConfig scaled_readout = at_base;
  scaled_readout.mup.output_mult = 2.0;
  CHECK_FALSE(forward_is_standard(scaled_readout));

  CHECK_NOTHROW(check_same_forward_multipliers(at_base, sp, "w.safetensors"));
  CHECK_NOTHROW(check_same_forward_multipliers(sp, at_base, "w.safetensors"));
  CHECK_NOTHROW(check_same_forward_multipliers(wide, wide, "w.safetensors"));
  CHECK_THROWS_WITH(check_same_forward_multipliers(wide, sp, "w.safetensors"),
                    Catch::Contains("w.safetensors was trained under the standard parametrization") &&
                        Catch::Contains("base_width 32"));
  CHECK_THROWS_WITH(check_same_forward_multipliers(sp, wide, "w.safetensors"),
                    Catch::Contains("this model is the standard parametrization"));
  ModelConfig other_base = wide;
  other_base.mup.base_width = 16;
  CHECK_THROWS_WITH(check_same_forward_multipliers(other_base, wide, "w.safetensors"),
                    Catch::Contains("base_width 16") && Catch::Contains("base_width 32"));
}
