#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/nn/modules/linear.h>

#include "models/backbone.h"
#include "models/layers/activation_checkpoint.h"
#include "models/registry.h"
#include "src/common/compat.h"
#include "src/common/error.h"
#include "src/io/module_weights.h"

using namespace ditlab;

namespace {

// Two layers, a gather by an index tensor and a nonlinearity: parameters, a differentiable input
// and an integer input, as a transformer block has.
struct Piece {
  torch::nn::Linear a{8, 16}, b{16, 8};
  at::Tensor operator()(const std::vector<at::Tensor>& in) {
    auto h = at::gelu(a->forward(in[0])).index_select(1, in[1]);
    return b->forward(h) * in[2];
  }
  std::vector<at::Tensor> parameters() {
    auto p = a->parameters();
    for (auto& q : b->parameters()) p.push_back(q);
    return p;
  }
};

void clear_grads(const std::vector<at::Tensor>& tensors) {
  for (auto t : tensors) {
    if (t.grad().defined()) t.mutable_grad().reset();
  }
}

}  // namespace

TEST_CASE("a checkpointed piece gives the plain piece's output and gradients", "[layers]") {
  torch::manual_seed(0);
  Piece piece;
  auto x = at::randn({3, 5, 8}).requires_grad_(true);
  auto order = at::randperm(5);
  auto scale = at::randn({3, 5, 8}).requires_grad_(true);
  auto weight = at::randn({3, 5, 8});
  auto fn = [&](const std::vector<at::Tensor>& in) { return piece(in); };

  auto plain = fn({x, order, scale});
  (plain * weight).sum().backward();
  std::vector<at::Tensor> expected = {x.grad().clone(), scale.grad().clone()};
  for (auto& p : piece.parameters()) expected.push_back(p.grad().clone());
  clear_grads({x, scale});
  clear_grads(piece.parameters());

  auto out = checkpointed(fn, {x, order, scale});
  CHECK(at::equal(out, plain));
  CHECK(out.grad_fn() != nullptr);
  (out * weight).sum().backward();
  std::vector<at::Tensor> got = {x.grad(), scale.grad()};
  for (auto& p : piece.parameters()) got.push_back(p.grad());
  REQUIRE(got.size() == expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("gradient " << i);
    REQUIRE(got[i].defined());
    CHECK(at::allclose(got[i], expected[i], 1e-6, 1e-7));
  }
}

TEST_CASE("a checkpointed piece keeps no activations: backward runs it again", "[layers]") {
  torch::manual_seed(1);
  Piece piece;
  int calls = 0;
  auto fn = [&](const std::vector<at::Tensor>& in) {
    ++calls;
    return piece(in);
  };
  auto x = at::randn({2, 5, 8}).requires_grad_(true);
  auto out = checkpointed(fn, {x, at::arange(5), at::ones({2, 5, 8})});
  CHECK(calls == 1);
  // The forward records no graph inside the piece: the output's only node is the checkpoint's.
  CHECK(out.grad_fn()->next_edges().size() == 1 + 3);  // the anchor and the three inputs
  out.sum().backward();
  CHECK(calls == 2);
}

TEST_CASE("parameters get gradients when no input requires them", "[layers]") {
  torch::manual_seed(2);
  Piece piece;
  auto fn = [&](const std::vector<at::Tensor>& in) { return piece(in); };
  auto x = at::randn({2, 5, 8});  // data, not a parameter's output
  auto out = checkpointed(fn, {x, at::arange(5), at::ones({2, 5, 8})});
  REQUIRE(out.requires_grad());
  out.sum().backward();
  for (auto& p : piece.parameters()) {
    REQUIRE(p.grad().defined());
    CHECK(p.grad().abs().sum().item<double>() > 0.0);
  }
}

TEST_CASE("without grad mode a checkpointed piece is a plain call", "[layers]") {
  torch::manual_seed(3);
  Piece piece;
  int calls = 0;
  auto fn = [&](const std::vector<at::Tensor>& in) {
    ++calls;
    return piece(in);
  };
  torch::NoGradGuard no_grad;
  auto x = at::randn({2, 5, 8});
  auto out = checkpointed(fn, {x, at::arange(5), at::ones({2, 5, 8})});
  CHECK(!out.requires_grad());
  CHECK(at::equal(out, piece({x, at::arange(5), at::ones({2, 5, 8})})));
  CHECK(calls == 1);
}

TEST_CASE("the recomputation runs under the forward's autocast", "[layers]") {
  torch::manual_seed(4);
  Piece piece;
  auto fn = [&](const std::vector<at::Tensor>& in) { return piece(in); };
  auto x = at::randn({2, 5, 8}).requires_grad_(true);
  const std::vector<at::Tensor> rest = {at::arange(5), at::ones({2, 5, 8})};
  auto run = [&](bool checkpoint, bool bf16) {
    at::Tensor out;
    {
      compat::AutocastGuard autocast(at::kCPU, at::kBFloat16, bf16);
      out = checkpoint ? checkpointed(fn, {x, rest[0], rest[1]}) : fn({x, rest[0], rest[1]});
    }
    out.to(at::kFloat).pow(2).sum().backward();  // backward outside the autocast region, as the trainer
    auto g = piece.a->weight.grad().clone();
    clear_grads(piece.parameters());
    clear_grads({x});
    return g;
  };
  auto bf16 = run(false, true), recomputed = run(true, true), fp32 = run(false, false);
  CHECK(at::allclose(recomputed, bf16, 1e-6, 1e-7));
  // bf16 products differ from fp32 ones by far more: the recomputation did run in bf16.
  CHECK_FALSE(at::allclose(recomputed, fp32, 1e-3, 1e-4));
}

namespace {

ModelConfig small(const std::string& name) {
  ModelConfig c;
  c.name = name;
  c.hidden_size = 32;
  c.num_heads = 2;
  c.input_size = 8;
  c.in_channels = 3;
  c.num_classes = 5;
  if (name == "u-dit") {
    c.hidden_size = 16;
    c.level_depths = {1, 1, 2, 1, 1};
  } else {
    c.depth = 4;
    c.patch_size = 2;
  }
  return c;
}

// Loss and gradients of one forward/backward; the weights are random everywhere (adaLN-Zero
// would otherwise start the blocks at zero, where many gradients vanish).
std::pair<double, std::map<std::string, at::Tensor>> loss_and_gradients(const ModelConfig& c,
                                                                        const std::map<std::string, at::Tensor>& weights) {
  auto model = build_backbone(c);
  load_state_dict(*model, weights, "test weights");
  torch::manual_seed(11);
  auto x = at::randn({2, 3, 8, 8});
  auto t = at::tensor({3, 700}, at::kLong), y = at::tensor({1, 5}, at::kLong);
  auto out = model->forward(x, t, y).out;
  auto loss = (out - at::randn_like(out)).pow(2).mean();
  loss.backward();
  std::map<std::string, at::Tensor> grads;
  for (const auto& p : model->named_parameters()) {
    if (p.value().requires_grad()) grads[p.key()] = p.value().grad();
  }
  return {loss.item<double>(), grads};
}

}  // namespace

TEST_CASE("checkpointed blocks give every backbone the same loss and gradients", "[layers]") {
  for (const auto& [name, conditioning] : std::vector<std::pair<std::string, std::string>>{
           {"dit", "adaln_zero"}, {"dit", "adaln"}, {"dit", "cross_attention"},
           {"dit", "in_context"}, {"skip-dit", "adaln_zero"}, {"u-dit", "adaln_zero"}}) {
    INFO(name << " " << conditioning);
    ModelConfig c = small(name);
    c.conditioning = conditioning;
    torch::manual_seed(5);
    auto reference = build_backbone(c);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : reference->parameters()) p.normal_(0.0, 0.2);
    }
    const auto weights = state_dict(*reference);
    auto [plain_loss, plain] = loss_and_gradients(c, weights);
    c.checkpoint_blocks = true;
    auto [loss, grads] = loss_and_gradients(c, weights);
    CHECK(loss == Approx(plain_loss).epsilon(1e-6));
    for (const auto& [key, g] : plain) {
      INFO(key);
      REQUIRE(grads[key].defined());
      CHECK(at::allclose(grads[key], g, 1e-5, 1e-6));
    }
  }
}

TEST_CASE("dit-moe refuses checkpointed blocks", "[layers]") {
  ModelConfig c = small("dit-moe");
  c.moe.num_experts = 4;
  c.checkpoint_blocks = true;
  CHECK_THROWS_WITH(build_backbone(c), Catch::Contains("model.checkpoint_blocks") &&
                                           Catch::Contains("load-balancing"));
}
