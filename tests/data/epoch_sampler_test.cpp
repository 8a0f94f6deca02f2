#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <set>

#include "data/epoch_sampler.h"
#include "data/fashion_mnist.h"
#include "data/prefetch_loader.h"
#include "src/common/error.h"
#include "tests/test_support.h"

using namespace ditlab;

TEST_CASE("each epoch visits distinct images, in an order fixed by (seed, epoch)", "[data]") {
  EpochSampler sampler(103, 10, 42);
  CHECK(sampler.steps_per_epoch() == 10);  // the last 3 images of each epoch are dropped
  std::set<int64_t> seen;
  for (int64_t step = 0; step < 10; ++step) {
    for (int64_t i : sampler.global_batch(step)) {
      CHECK(i >= 0);
      CHECK(i < 103);
      seen.insert(i);
    }
  }
  CHECK(seen.size() == 100);
  // A pure function of the step: a fresh sampler, or a revisit after other epochs, agrees.
  EpochSampler again(103, 10, 42);
  auto later = sampler.global_batch(25);
  CHECK(again.global_batch(25) == later);
  CHECK(sampler.global_batch(3) == again.global_batch(3));
  CHECK(sampler.global_batch(0) != sampler.global_batch(10));  // epochs are reshuffled
  CHECK(EpochSampler(103, 10, 43).global_batch(0) != EpochSampler(103, 10, 42).global_batch(0));
  CHECK_THROWS_AS(EpochSampler(5, 10, 0), ConfigError);
}

TEST_CASE("the prefetching loader returns exactly the batches of direct loading", "[data]") {
  auto dataset = std::make_shared<FashionMnist>(ditlab::testing::fashion_mnist_dir(), "train", 32, 200);
  PrefetchLoader prefetching(dataset, EpochSampler(200, 16, 1), 3);
  PrefetchLoader direct(dataset, EpochSampler(200, 16, 1), 0);
  for (int64_t step : {0, 1, 2, 3, 7, 8, 30}) {  // includes jumps, like a resume
    auto a = prefetching.batch_for_step(step), b = direct.batch_for_step(step);
    CHECK(at::equal(a.images, b.images));
    CHECK(at::equal(a.labels, b.labels));
  }
}
