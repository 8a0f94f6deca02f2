#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <limits>

#include "models/dim/selective_scan.h"
#include "src/common/error.h"

using namespace ditlab;

namespace {
struct ScanInputs {
  at::Tensor u, delta, A, B, C, D;
  std::vector<at::Tensor> all() const { return {u, delta, A, B, C, D}; }
};

ScanInputs random_inputs(int64_t batch, int64_t d, int64_t length, int64_t n, double delta_scale) {
  ScanInputs in;
  in.u = at::randn({batch, d, length});
  in.delta = at::softplus(at::randn({batch, d, length})) * delta_scale;  // > 0, as in Mamba
  in.A = -at::arange(1, n + 1, at::kFloat).repeat({d, 1});               // Mamba's -exp(A_log) init
  in.B = at::randn({batch, n, length});
  in.C = at::randn({batch, n, length});
  in.D = at::ones({d});
  for (auto* t : {&in.u, &in.delta, &in.A, &in.B, &in.C, &in.D}) t->requires_grad_(true);
  return in;
}

std::vector<at::Tensor> gradients(const at::Tensor& y, const ScanInputs& in, const at::Tensor& weight) {
  return torch::autograd::grad({(y * weight).sum()}, in.all());
}
}  // namespace

TEST_CASE("the chunked selective scan equals the sequential definition, values and gradients",
          "[dim]") {
  torch::manual_seed(7);
  // Lengths that do and do not fill the chunks (17: one position in the last chunk, so the
  // gradients' reverse pass starts with 15 padded ones); small and very large delta (the latter
  // would overflow a log-space cumulative-sum scan).
  for (const auto& [length, chunk, delta_scale] :
       {std::tuple<int64_t, int64_t, double>{1, 16, 1.0}, {37, 16, 1.0}, {64, 16, 0.05},
        {50, 8, 20.0}, {33, 64, 1.0}, {20, 1, 1.0}, {17, 16, 1.0}}) {
    auto in = random_inputs(2, 3, length, 4, delta_scale);
    auto reference = selective_scan_sequential(in.u, in.delta, in.A, in.B, in.C, in.D);
    auto fast = selective_scan_chunked(in.u, in.delta, in.A, in.B, in.C, in.D, chunk);
    CAPTURE(length, chunk, delta_scale);
    REQUIRE(fast.sizes() == reference.sizes());
    CHECK(at::isfinite(fast).all().item<bool>());
    CHECK((fast - reference).abs().max().item<double>() < 1e-5 * (1 + reference.abs().max().item<double>()));
    auto weight = at::randn(reference.sizes());
    auto g_reference = gradients(reference, in, weight), g_fast = gradients(fast, in, weight);
    for (size_t i = 0; i < g_reference.size(); ++i) {
      CAPTURE(i);
      const double scale = 1 + g_reference[i].abs().max().item<double>();
      CHECK((g_fast[i] - g_reference[i]).abs().max().item<double>() < 1e-5 * scale);
    }
  }
}

TEST_CASE("the sequential scan follows the recurrence written by hand", "[dim]") {
  // One channel, one state, length 3: h1 = d1 B1 u1; h2 = e^{d2 A} h1 + d2 B2 u2; ...
  auto u = at::tensor({1.0f, 2.0f, -1.0f}).view({1, 1, 3});
  auto delta = at::tensor({0.5f, 1.0f, 0.25f}).view({1, 1, 3});
  auto A = at::tensor({-2.0f}).view({1, 1});
  auto B = at::tensor({1.0f, 0.5f, 2.0f}).view({1, 1, 3});
  auto C = at::tensor({3.0f, -1.0f, 0.5f}).view({1, 1, 3});
  auto D = at::tensor({0.1f});
  const double h1 = 0.5 * 1 * 1, h2 = std::exp(-2.0) * h1 + 1.0 * 0.5 * 2;
  const double h3 = std::exp(-0.5) * h2 + 0.25 * 2 * -1;
  auto y = selective_scan_sequential(u, delta, A, B, C, D);
  CHECK(y[0][0][0].item<double>() == Approx(3 * h1 + 0.1));
  CHECK(y[0][0][1].item<double>() == Approx(-1 * h2 + 0.2));
  CHECK(y[0][0][2].item<double>() == Approx(0.5 * h3 - 0.1));
  CHECK_THROWS_AS(selective_scan_chunked(u, delta, A, B.view({1, 3, 1}), C, D), ShapeError);
  CHECK_THROWS_AS(selective_scan_fused_cpu(u, delta, A, B.view({1, 3, 1}), C, D), ShapeError);
}

TEST_CASE("the fused CPU scan equals the sequential definition, values and gradients", "[dim]") {
  torch::manual_seed(11);
  // ctest runs every case on one thread; the backward's per-thread channel blocks need several.
  const int threads_before = at::get_num_threads();
  at::set_num_threads(3);
  // Channel counts below, at and above the thread count (the backward splits channels into
  // per-thread blocks and sums their B and C gradients), a batch of 1 and of 3, large delta.
  for (const auto& [batch, channels, length, delta_scale] :
       {std::tuple<int64_t, int64_t, int64_t, double>{1, 1, 1, 1.0}, {3, 5, 37, 1.0},
        {2, 2, 64, 0.05}, {1, 9, 50, 20.0}}) {
    auto in = random_inputs(batch, channels, length, 4, delta_scale);
    in.A = (in.A * (1 + 0.3 * at::rand(in.A.sizes()))).detach().requires_grad_(true);  // not 1..n
    in.D = (at::randn({channels})).requires_grad_(true);
    auto reference = selective_scan_sequential(in.u, in.delta, in.A, in.B, in.C, in.D);
    auto fused = selective_scan_fused_cpu(in.u, in.delta, in.A, in.B, in.C, in.D);
    CAPTURE(batch, channels, length, delta_scale);
    REQUIRE(fused.sizes() == reference.sizes());
    CHECK((fused - reference).abs().max().item<double>() < 1e-5 * (1 + reference.abs().max().item<double>()));
    auto weight = at::randn(reference.sizes());
    auto g_reference = gradients(reference, in, weight), g_fused = gradients(fused, in, weight);
    for (size_t i = 0; i < g_reference.size(); ++i) {
      CAPTURE(i);
      REQUIRE(g_fused[i].sizes() == g_reference[i].sizes());
      const double scale = 1 + g_reference[i].abs().max().item<double>();
      CHECK((g_fused[i] - g_reference[i]).abs().max().item<double>() < 1e-5 * scale);
    }
  }
  at::set_num_threads(threads_before);
}

TEST_CASE("the fused scan's hand-written gradients match finite differences in float64", "[dim]") {
  torch::manual_seed(3);
  auto in = random_inputs(2, 3, 9, 3, 1.0);
  for (auto* t : {&in.u, &in.delta, &in.A, &in.B, &in.C, &in.D}) {
    *t = t->detach().to(at::kDouble).requires_grad_(true);
  }
  auto weight = at::randn({2, 3, 9}, at::kDouble);
  auto loss = [&](const ScanInputs& x) {
    return (selective_scan_fused_cpu(x.u, x.delta, x.A, x.B, x.C, x.D) * weight).sum().item<double>();
  };
  const auto analytic = gradients(selective_scan_fused_cpu(in.u, in.delta, in.A, in.B, in.C, in.D), in, weight);
  const double eps = 1e-6;
  auto inputs = in.all();
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto flat = inputs[i].detach().view(-1);
    for (int64_t j = 0; j < flat.numel(); ++j) {
      const double saved = flat[j].item<double>();
      flat[j] = saved + eps;
      const double up = loss(in);
      flat[j] = saved - eps;
      const double down = loss(in);
      flat[j] = saved;
      CAPTURE(i, j);
      CHECK(analytic[i].reshape(-1)[j].item<double>() == Approx((up - down) / (2 * eps)).epsilon(1e-6).margin(1e-8));
    }
  }
}

TEST_CASE("the fused scan keeps its inputs' dtypes and the mixer's scan takes it on CPUs", "[dim]") {
  auto in = random_inputs(2, 4, 12, 4, 1.0);
  auto half_u = in.u.detach().to(at::kBFloat16).requires_grad_(true);
  auto y = selective_scan_fused_cpu(half_u, in.delta, in.A, in.B, in.C, in.D);
  CHECK(y.scalar_type() == at::kBFloat16);
  auto grads = torch::autograd::grad({y.to(at::kFloat).sum()}, {half_u, in.delta});
  CHECK(grads[0].scalar_type() == at::kBFloat16);
  CHECK(grads[1].scalar_type() == at::kFloat);
  // A NaN step size stays NaN (the fused scan's exp is its own arithmetic), from its position on,
  // so that the trainer's finiteness check sees it; the positions before stay finite.
  auto broken = in.delta.detach().clone();
  broken[1][2][5] = std::numeric_limits<float>::quiet_NaN();
  auto y_broken = selective_scan_fused_cpu(in.u, broken, in.A, in.B, in.C, in.D).detach();
  CHECK(at::isnan(y_broken[1][2].narrow(0, 5, 7)).all().item<bool>());
  CHECK(at::isfinite(y_broken[1][2].narrow(0, 0, 5)).all().item<bool>());
  CHECK(at::isfinite(y_broken[0]).all().item<bool>());
  // A NaN in A reaches the output only through exp(delta A) (the input term delta u B stays
  // finite): every output of its channel is NaN, the other channels' are not.
  auto broken_A = in.A.detach().clone();
  broken_A[2][1] = std::numeric_limits<float>::quiet_NaN();
  auto y_broken_A = selective_scan_fused_cpu(in.u, in.delta, broken_A, in.B, in.C, in.D).detach();
  CHECK(at::isnan(y_broken_A.select(1, 2)).all().item<bool>());
  CHECK(at::isfinite(y_broken_A.select(1, 1)).all().item<bool>());
  // selective_scan dispatches to the fused loops here: bitwise the same numbers.
  CHECK(at::equal(selective_scan(in.u, in.delta, in.A, in.B, in.C, in.D),
                  selective_scan_fused_cpu(in.u, in.delta, in.A, in.B, in.C, in.D)));
}
