// Means over a logging window of a few per-step scalars, for the trainers whose logs are a line
// of means (the autoencoder and classifier trainers). The sums stay on the device until the
// window closes: one host read per log line, not per step.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace ditlab {

class StepMeans {
 public:
  // Windows of `log_every` steps (at least 1, at most the run) of a run of `steps` steps; the
  // last step closes the last window, however short.
  StepMeans(int64_t log_every, int64_t steps);

  // Adds step `step`'s (0-based) values, 0-dim tensors always in the same order. True when this
  // step closes a window.
  bool add(int64_t step, const std::vector<at::Tensor>& values);

  // The closed window's means, in the order of the values; the next window starts empty.
  std::vector<double> take();

 private:
  int64_t every_, steps_, count_ = 0;
  std::vector<at::Tensor> sums_;
};

}  // namespace ditlab
