#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "models/registry.h"
#include "trainers/ema.h"

using namespace ditlab;

namespace {

std::shared_ptr<Backbone> tiny_dit() {
  ModelConfig c;
  c.name = "dit";
  c.depth = 1;
  c.hidden_size = 8;
  c.num_heads = 2;
  c.patch_size = 2;
  c.input_size = 4;
  c.in_channels = 1;
  c.num_classes = 2;
  return build_backbone(c);
}

std::vector<at::Tensor> scratch_for(Backbone& model) {
  std::vector<at::Tensor> out;
  for (const auto& p : model.parameters()) {
    if (p.requires_grad()) out.push_back(at::full_like(p, 123.0));
  }
  return out;
}

}  // namespace

TEST_CASE("EMA follows shadow = d * shadow + (1 - d) * model, with optional warm-up", "[trainer]") {
  auto model = tiny_dit();
  Ema ema(*model, tiny_dit());
  auto p = model->parameters()[0];
  auto start = p.clone();
  CHECK(at::equal(ema.shadow().parameters()[0], start));  // starts as a copy
  {
    torch::NoGradGuard g;
    p.add_(1.0);
  }
  ema.update(*model, 0.9);
  CHECK(at::allclose(ema.shadow().parameters()[0], start + 0.1));
  CHECK(Ema::decay_at(0, 0.9999, true) == Approx(0.1));
  CHECK(Ema::decay_at(90, 0.9999, true) == Approx(0.91));
  CHECK(Ema::decay_at(1000000, 0.995, true) == 0.995);
  CHECK(Ema::decay_at(0, 0.9999, false) == 0.9999);
}

TEST_CASE("the EMA update with a device weight is shadow + w (model - shadow), and w = 0 changes nothing", "[ema]") {
  torch::manual_seed(0);
  auto model = tiny_dit();
  Ema ema(*model, tiny_dit());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) {
      if (p.requires_grad()) p.add_(at::randn_like(p));
    }
  }
  auto before = [&] {
    std::vector<at::Tensor> out;
    for (const auto& s : ema.shadow().parameters()) out.push_back(s.clone());
    return out;
  }();
  const auto params = model->parameters();
  size_t frozen = 0;
  for (const auto& p : params) frozen += p.requires_grad() ? 0 : 1;
  REQUIRE(frozen > 0);  // DiT's fixed positional embedding

  // w = 0: a skipped step leaves every average bit for bit.
  ema.update(*model, at::zeros({}, at::kFloat), scratch_for(*model));
  auto shadow = ema.shadow().parameters();
  for (size_t i = 0; i < shadow.size(); ++i) REQUIRE(at::equal(shadow[i], before[i]));

  // w = 0.3: against the formula in float64.
  ema.update(*model, at::full({}, 0.3, at::kFloat), scratch_for(*model));
  for (size_t i = 0; i < shadow.size(); ++i) {
    INFO("parameter " << i);
    if (!params[i].requires_grad()) {
      CHECK(at::equal(shadow[i], before[i]));  // frozen: unchanged
      continue;
    }
    auto s = before[i].to(at::kDouble), p = params[i].detach().to(at::kDouble);
    auto expected = s + 0.3 * (p - s);
    CHECK(at::allclose(shadow[i].to(at::kDouble), expected, 1e-6, 1e-6));
    CHECK_FALSE(at::allclose(shadow[i], before[i]));
  }

  // The same as the host-decay update (decay 0.7) on a fresh average.
  Ema host(*model, tiny_dit()), device(*model, tiny_dit());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) {
      if (p.requires_grad()) p.mul_(0.5);
    }
  }
  host.update(*model, 0.7);
  device.update(*model, at::full({}, 0.3, at::kFloat), scratch_for(*model));
  auto h = host.shadow().parameters(), d = device.shadow().parameters();
  for (size_t i = 0; i < h.size(); ++i) CHECK(at::allclose(h[i], d[i], 1e-6, 1e-6));

  CHECK_THROWS_WITH(ema.update(*model, at::zeros({}, at::kFloat), {}), Catch::Contains("scratch"));
}
