#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include "trainers/step_means.h"

using namespace ditlab;

TEST_CASE("step means close every log_every steps and at the last step", "[step_means]") {
  StepMeans window(3, 7);
  std::vector<int64_t> closed;
  std::vector<std::vector<double>> means;
  for (int64_t step = 0; step < 7; ++step) {
    // Values step and 10 * step: the means of a window are easy to write down.
    if (window.add(step, {at::scalar_tensor(static_cast<double>(step)), at::scalar_tensor(10.0f * step)})) {
      closed.push_back(step);
      means.push_back(window.take());
    }
  }
  CHECK(closed == std::vector<int64_t>{2, 5, 6});
  REQUIRE(means.size() == 3);
  CHECK(means[0] == std::vector<double>{1.0, 10.0});  // steps 0, 1, 2
  CHECK(means[1] == std::vector<double>{4.0, 40.0});  // steps 3, 4, 5
  CHECK(means[2] == std::vector<double>{6.0, 60.0});  // the short last window
}

TEST_CASE("a window is at least one step and at most the run", "[step_means]") {
  StepMeans every_step(0, 5);
  CHECK(every_step.add(0, {at::scalar_tensor(1.0)}));
  StepMeans whole_run(100, 2);
  CHECK_FALSE(whole_run.add(0, {at::scalar_tensor(1.0)}));
  CHECK(whole_run.add(1, {at::scalar_tensor(2.0)}));
  CHECK(whole_run.take() == std::vector<double>{1.5});
}
