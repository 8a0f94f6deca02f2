// Two ranks as two threads of this process, each with its own Gloo process group over loopback:
// the reduced gradients must equal the sum of what each rank's backward produced, computed here
// without any communication, whatever the bucketing, overlap, accumulation or unused parameters.
#ifdef DITLAB_WITH_GLOO
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>

#include <array>
#include <thread>

#include "src/distributed/communicator.h"
#include "src/distributed/grad_reducer.h"

using namespace ditlab;

namespace {

// A small "model": three parameters of different sizes. `extra` is used only on rank 0 (an
// expert that got no tokens on rank 1).
struct Params {
  at::Tensor a, b, extra;
  std::vector<at::Tensor> list() const { return {a, b, extra}; }
};

// Own generators: the two ranks are threads, and the global generator is shared.
Params make_params() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  return {at::randn({40}, gen).requires_grad_(), at::randn({30, 20}, gen).requires_grad_(),
          at::randn({16}, gen).requires_grad_()};
}

// The loss of micro-batch `micro` on `rank`: different data per rank and micro-batch.
at::Tensor loss_of(const Params& p, int rank, int micro) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(100 + 10 * rank + micro);
  auto x = at::randn({20}, gen);
  auto h = at::tanh(at::matmul(p.b, x)).sum() * p.a.sum();
  if (rank == 0) h = h + (p.extra * p.extra).sum() * (micro + 1);
  return h;
}

// Each rank's gradients, accumulated over `micro_batches`, without communication.
std::vector<at::Tensor> local_gradients(int rank, int micro_batches) {
  Params p = make_params();
  for (int m = 0; m < micro_batches; ++m) loss_of(p, rank, m).backward();
  std::vector<at::Tensor> out;
  for (const auto& t : p.list()) out.push_back(t.grad().defined() ? t.grad().clone() : at::zeros_like(t));
  return out;
}

struct RankResult {
  std::vector<at::Tensor> grads;
  size_t buckets = 0;
  int64_t started_during_backward = 0;
  std::string error;
};

RankResult run_rank(int rank, int port, GradReducerOptions options, int micro_batches) {
  RankResult result;
  try {
    DistEnv env;
    env.rank = rank;
    env.world_size = 2;
    env.master_port = port;
    Communicator communicator(env, "gloo", std::chrono::seconds(20));
    Params p = make_params();
    GradReducer reducer(p.list(), communicator, options);
    for (int step = 0; step < 2; ++step) {  // the second step checks the reset between steps
      for (const auto& t : p.list()) {
        if (t.grad().defined()) t.mutable_grad().zero_();
      }
      for (int m = 0; m < micro_batches; ++m) {
        if (m + 1 == micro_batches) reducer.expect_final_backward();
        loss_of(p, rank, m).backward();
      }
      reducer.reduce();
    }
    for (const auto& t : p.list()) result.grads.push_back(t.grad().clone());
    result.buckets = reducer.num_buckets();
    result.started_during_backward = reducer.buckets_started_during_backward();
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  return result;
}

std::array<RankResult, 2> run_two_ranks(int port, GradReducerOptions options, int micro_batches) {
  std::array<RankResult, 2> results;
  std::thread other([&] { results[1] = run_rank(1, port, options, micro_batches); });
  results[0] = run_rank(0, port, options, micro_batches);
  other.join();
  return results;
}

}  // namespace

TEST_CASE("bucketed all-reduce sums every gradient over ranks", "[distributed]") {
  const auto [overlap, bucket_bytes, micro_batches, port] = GENERATE(
      std::make_tuple(true, int64_t{1000}, 1, 29711),   // several buckets, started by hooks
      std::make_tuple(true, int64_t{1000}, 3, 29712),   // gradient accumulation
      std::make_tuple(false, int64_t{1000}, 2, 29713),  // all reduced after backward
      std::make_tuple(true, int64_t{25} << 20, 1, 29714));  // one bucket
  CAPTURE(overlap, bucket_bytes, micro_batches);
  GradReducerOptions options;
  options.bucket_bytes = bucket_bytes;
  options.overlap = overlap;
  auto results = run_two_ranks(port, options, micro_batches);
  REQUIRE(results[0].error == "");
  REQUIRE(results[1].error == "");
  auto g0 = local_gradients(0, micro_batches), g1 = local_gradients(1, micro_batches);
  for (int r = 0; r < 2; ++r) {
    for (size_t i = 0; i < g0.size(); ++i) {
      CAPTURE(r, i);
      CHECK(at::allclose(results[r].grads[i], g0[i] + g1[i], 1e-5, 1e-6));
    }
  }
  // 2400 + 160 + 64 bytes of parameters: 1000-byte buckets close after b, then after a + extra.
  CHECK(results[0].buckets == (bucket_bytes == 1000 ? 2u : 1u));
  if (overlap) {
    // Rank 0 produces every gradient during backward, so its hooks started buckets; on rank 1
    // `extra` never gets one, which holds back its bucket (and the ones after it) to reduce().
    CHECK(results[0].started_during_backward == 2 * static_cast<int64_t>(results[0].buckets));
    CHECK(results[1].started_during_backward < results[0].started_during_backward);
  } else {
    CHECK(results[0].started_during_backward == 0);
  }
}

TEST_CASE("a half-precision all-reduce rounds the sums to 16-bit precision", "[distributed]") {
  // Gloo in LibTorch 1.13 sums fp16 but not bf16 (the trainer checks that with can_sum); the
  // cast to and from the wire dtype is the same code for both.
  GradReducerOptions options;
  options.bucket_bytes = 1000;
  options.reduce_dtype = at::kHalf;
  auto results = run_two_ranks(29715, options, 1);
  REQUIRE(results[0].error == "");
  REQUIRE(results[1].error == "");
  auto g0 = local_gradients(0, 1), g1 = local_gradients(1, 1);
  for (size_t i = 0; i < g0.size(); ++i) {
    CAPTURE(i);
    auto expected = g0[i] + g1[i];
    CHECK(results[0].grads[i].scalar_type() == at::kFloat);
    // fp16 keeps 11 significant bits: each addend and the sum are rounded (relative 2^-11).
    auto error = (results[0].grads[i] - expected).abs();
    auto bound = (g0[i].abs() + g1[i].abs()) * (3.0 / 2048) + 1e-6;
    CHECK((error <= bound).all().item<bool>());
    CHECK(at::equal(results[0].grads[i], results[1].grads[i]));
    CHECK_FALSE(at::equal(results[0].grads[i], expected));  // it did go through fp16
  }
}

TEST_CASE("can_sum tells which dtypes the backend sums", "[distributed]") {
  std::array<std::pair<bool, bool>, 2> answers;
  auto ask = [&](int rank) {
    DistEnv env;
    env.rank = rank;
    env.world_size = 2;
    env.master_port = 29716;
    Communicator communicator(env, "gloo", std::chrono::seconds(20));
    answers[rank] = {communicator.can_sum(at::kFloat), communicator.can_sum(at::kHalf)};
  };
  std::thread other(ask, 1);
  ask(0);
  other.join();
  CHECK(answers[0] == std::make_pair(true, true));
  CHECK(answers[1] == answers[0]);
}
#endif  // DITLAB_WITH_GLOO
