// Sums of the logged quantities over one logging window. They stay on the device and are read
// once per window (one host sync per log line). Checkpoints save them, so that the logged means
// are exact across a resume in the middle of a window.
#pragma once
#include <ATen/core/Tensor.h>

#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace ditlab {

class LogWindow {
 public:
  LogWindow();

  // One optimizer step's sums over its global batch of `images`.
  // `extras`: a backbone's per-step values (its auxiliary loss, expert loads, ...), any shape;
  // the record reports their mean per step, a vector as name.0, name.1, ...
  void add(const at::Tensor& loss_sum, const at::Tensor& mse_sum, const at::Tensor& vb_sum,
           const at::Tensor& grad_norm, int64_t images,
           const std::map<std::string, at::Tensor>& extras = {});
  bool empty() const { return steps_ == 0; }

  // The metrics record of the window: step, epoch, loss, mse, vb, grad_norm, lr, steps_per_sec,
  // images_per_sec (per-sample means; grad_norm per step), then the extras (per step).
  std::vector<std::pair<std::string, double>> record(int64_t step, int64_t epoch, double lr) const;

  std::map<std::string, at::Tensor> to_tensors() const;
  // Restores a window saved by to_tensors (its clock restarts).
  void from_tensors(const std::map<std::string, at::Tensor>& tensors);

 private:
  at::Tensor loss_sum_, mse_sum_, vb_sum_, grad_norm_sum_;  // float64
  std::map<std::string, at::Tensor> extra_sums_;              // float64
  int64_t steps_ = 0, images_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace ditlab
