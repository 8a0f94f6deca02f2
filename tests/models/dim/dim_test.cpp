#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "models/dim/dim.h"
#include "models/registry.h"

using namespace ditlab;

namespace {

DiMOptions small_options() {
  DiMOptions o;
  o.input_size = 8;
  o.patch_size = 2;
  o.in_channels = 3;
  o.hidden_size = 16;
  o.depth = 5;
  o.num_classes = 4;
  o.learn_sigma = true;
  return o;
}

int64_t numel(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

}  // namespace

TEST_CASE("DiM scan orders are the four grid traversals, and each inverse undoes its order", "[dim]") {
  // A 2 x 3 grid stored row-major: 0 1 2 / 3 4 5.
  CHECK(at::equal(scan_permutation(0, 2, 3), at::tensor({0, 1, 2, 3, 4, 5}, at::kLong)));
  CHECK(at::equal(scan_permutation(-2, 2, 3), at::tensor({5, 4, 3, 2, 1, 0}, at::kLong)));
  CHECK(at::equal(scan_permutation(1, 2, 3), at::tensor({0, 3, 1, 4, 2, 5}, at::kLong)));
  CHECK(at::equal(scan_permutation(-1, 2, 3), at::tensor({5, 2, 4, 1, 3, 0}, at::kLong)));
  CHECK_THROWS(scan_permutation(2, 2, 3));
  auto x = at::randn({2, 6, 4});
  for (int order : {0, -2, 1, -1}) {
    auto p = scan_permutation(order, 2, 3);
    auto scanned = x.index_select(1, p);
    CHECK(at::equal(scanned.index_select(1, at::argsort(p)), x));
  }
}

TEST_CASE("DiM cycles the scan orders to the middle, backwards after it, and ends row-major", "[dim]") {
  std::vector<int> orders;
  for (int64_t i = 0; i < 11; ++i) orders.push_back(scan_order_of(i, 11));
  // Middle block 5: 0 -2 1 -1 0 -2 | then backwards -1 1 -2 0, last forced to 0.
  CHECK(orders == std::vector<int>{0, -2, 1, -1, 0, -2, 0, -1, 1, -2, 0});
}

TEST_CASE("DiM lays out extra tokens, dec_split pads and the laterally padded grid", "[dim]") {
  torch::manual_seed(0);
  DiMOptions o = small_options();
  DiM model(o);
  torch::NoGradGuard no_grad;
  // An identity smoother and a zero position embedding make every token traceable.
  model.first_smoother->weight.zero_();
  model.first_smoother->weight.select(2, 1).select(2, 1).fill_(1.0);
  model.first_smoother->bias.zero_();
  const int64_t n = 2, D = o.hidden_size, g = 4, pad = o.d_conv;
  auto x = at::randn({n, o.in_channels, o.input_size, o.input_size});
  auto t = at::tensor({3, 900}, at::kLong), y = at::tensor({1, 4}, at::kLong);
  auto seq = model.embed(x, t, y);
  REQUIRE(seq.sizes() == at::IntArrayRef({n, 2 + pad + (g + pad) * (g + pad), D}));
  CHECK(model.sequence_length() == seq.size(1));
  CHECK(at::allclose(seq.select(1, 0), timestep_frequency_embedding(t, D)));
  CHECK(at::allclose(seq.select(1, 1), model.label_emb->forward(y)));
  for (int64_t j = 0; j < pad; ++j) {
    CHECK(at::equal(seq.select(1, 2 + j), model.dec_split_pad[j].expand({n, D})));
  }
  auto patches = model.x_embedder->forward(x);  // [N, g*g, D]
  auto grid = seq.narrow(1, 2 + pad, (g + pad) * (g + pad)).view({n, g + pad, g + pad, D});
  for (int64_t row = 0; row < g + pad; ++row) {
    for (int64_t col = 0; col < g + pad; ++col) {
      INFO("row " << row << " col " << col);
      auto token = grid.select(1, row).select(1, col);
      if (row < g && col < g) {
        CHECK(at::allclose(token, patches.select(1, row * g + col), 1e-5, 1e-6));
      } else if (row < g) {
        CHECK(at::equal(token, model.pad_token[col - g].expand({n, D})));  // right columns
      } else {
        CHECK(at::equal(token, model.pad_token[row - g].expand({n, D})));  // bottom rows
      }
    }
  }
}

TEST_CASE("DiM's parameter count matches the built model and the L/2 and H/2 sizes", "[dim]") {
  for (int64_t D : {16, 520}) {  // both forms of the long-skip merge (D <= 512 and D > 512)
    DiMOptions o = small_options();
    o.hidden_size = D;
    o.depth = 3;
    DiM model(o);
    CHECK(numel(model) == dim_parameter_count(o));
  }
  ModelConfig c;
  c.input_size = 32;
  c.in_channels = 4;
  c.num_classes = 1000;
  c.learn_sigma = false;  // DiM predicts the noise only
  c.name = "DiM-L/2";
  // The spec's count from the official code: about 386M (L/2) and 862M (H/2).
  CHECK(model_cost(c).parameters / 1e6 == Approx(386.0).epsilon(0.01));
  c.name = "DiM-H/2";
  CHECK(model_cost(c).parameters / 1e6 == Approx(862.0).epsilon(0.01));
}

TEST_CASE("DiM's cost grows linearly with the number of tokens", "[dim]") {
  ModelConfig c;
  c.name = "DiM-S/2";
  c.in_channels = 4;
  c.num_classes = 1000;
  c.input_size = 32;
  const auto small = model_cost(c);
  c.input_size = 64;
  const auto large = model_cost(c);
  const double token_ratio = static_cast<double>(large.tokens) / static_cast<double>(small.tokens);
  // 2 extra + 3 pad tokens + the padded grid: (16 + 3)^2 at 32x32, (32 + 3)^2 at 64x64.
  CHECK(small.tokens == 5 + 19 * 19);
  CHECK(large.tokens == 5 + 35 * 35);
  CHECK(static_cast<double>(large.forward_macs) / static_cast<double>(small.forward_macs) ==
        Approx(token_ratio).epsilon(0.02));
}

TEST_CASE("DiM outputs the input's shape and learns sigma when asked", "[dim]") {
  torch::manual_seed(1);
  DiMOptions o = small_options();
  DiM model(o);
  auto out = model.forward(at::randn({2, 3, 8, 8}), at::tensor({5, 500}, at::kLong),
                           at::tensor({0, 3}, at::kLong)).out;
  CHECK(out.sizes() == at::IntArrayRef({2, 6, 8, 8}));
  CHECK(model.shape().out_channels == 6);
  CHECK_THROWS(model.forward(at::randn({2, 3, 4, 4}), at::tensor({5, 500}, at::kLong),
                             at::tensor({0, 3}, at::kLong)));
}

TEST_CASE("DiM smooths the unpadded grid before its final RMSNorm, as the official code", "[dim]") {
  // finalize_sequence (residual add, unpad, last_smoother), then norm_out (RMSNorm), then the
  // modulation and proj_out_2. A last smoother that only scales by c (a centred delta times c,
  // bias 0) then changes nothing but the RMSNorm's eps; normalising first would scale the
  // normalised tokens by c before the modulation and the final Linear.
  torch::manual_seed(3);
  DiM model(small_options());
  torch::NoGradGuard no_grad;
  // Large inputs keep every token's mean square far above the RMSNorm's eps (1e-5).
  auto x = 10.0 * at::randn({2, 3, 8, 8});
  auto t = at::tensor({5, 500}, at::kLong), y = at::tensor({0, 3}, at::kLong);
  auto with_smoother = [&](double c, int64_t row, int64_t col) {
    model.last_smoother->weight.zero_();  // [D, 1, 3, 3]
    model.last_smoother->weight.select(2, row).select(2, col).fill_(c);
    model.last_smoother->bias.zero_();
    return model.forward(x, t, y).out;
  };
  auto once = with_smoother(1.0, 1, 1), thrice = with_smoother(3.0, 1, 1);
  REQUIRE(once.abs().max().item<double>() > 1e-2);
  CHECK(at::allclose(once, thrice, 1e-4, 1e-4));
  // The smoother is on the path: moving its tap off centre shifts the tokens.
  CHECK_FALSE(at::allclose(once, with_smoother(1.0, 0, 0), 1e-3, 1e-3));
}

TEST_CASE("DiM decays every parameter, as the official AdamW gets them all", "[dim]") {
  // utils.py initialize_train_state: get_optimizer(list(nnet.parameters()), 'adamw', ...), one
  // group, weight decay 0.03 on everything (A_log and D included).
  DiM model(small_options());
  CHECK(model.decays("blocks.0.mixer.A_log"));
  CHECK(model.decays("blocks.0.mixer.D"));
  for (const auto& item : model.named_parameters()) {
    INFO(item.key());
    CHECK(model.decays(item.key()));
  }
}

TEST_CASE("checkpointed DiM blocks give the same loss and gradients", "[dim]") {
  DiMOptions o = small_options();
  torch::manual_seed(2);
  DiM plain(o);
  o.checkpoint_blocks = true;
  torch::manual_seed(2);
  DiM checkpointed(o);
  auto x = at::randn({2, 3, 8, 8});
  auto t = at::tensor({5, 500}, at::kLong), y = at::tensor({0, 3}, at::kLong);
  auto target = at::randn({2, 6, 8, 8});
  auto loss_a = (plain.forward(x, t, y).out - target).pow(2).mean();
  auto loss_b = (checkpointed.forward(x, t, y).out - target).pow(2).mean();
  CHECK(loss_a.item<double>() == Approx(loss_b.item<double>()).epsilon(1e-6));
  loss_a.backward();
  loss_b.backward();
  auto pa = plain.named_parameters(), pb = checkpointed.named_parameters();
  for (const auto& item : pa) {
    INFO(item.key());
    REQUIRE(pb[item.key()].grad().defined());
    CHECK(at::allclose(item.value().grad(), pb[item.key()].grad(), 1e-5, 1e-6));
  }
}
