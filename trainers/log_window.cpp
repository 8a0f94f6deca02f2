#include "trainers/log_window.h"

#include <ATen/ATen.h>

#include "src/common/error.h"

namespace ditlab {

LogWindow::LogWindow()
    : loss_sum_(at::zeros({}, at::kDouble)),
      mse_sum_(at::zeros({}, at::kDouble)),
      vb_sum_(at::zeros({}, at::kDouble)),
      grad_norm_sum_(at::zeros({}, at::kDouble)),
      start_(std::chrono::steady_clock::now()) {}

void LogWindow::add(const at::Tensor& loss_sum, const at::Tensor& mse_sum, const at::Tensor& vb_sum,
                    const at::Tensor& grad_norm, int64_t images,
                    const std::map<std::string, at::Tensor>& extras) {
  auto accumulate = [&](at::Tensor& total, const at::Tensor& value) {
    if (steps_ == 0 && total.device() != value.device()) {
      // A fresh window's sums are zeros on the CPU: start them on the value's device instead, as
      // moving them there would make the host wait for the device (a blocking copy).
      total = value.to(at::kDouble, /*non_blocking=*/false, /*copy=*/true);
      return;
    }
    total = total.to(value.device()) + value.to(at::kDouble);
  };
  accumulate(loss_sum_, loss_sum);
  accumulate(mse_sum_, mse_sum);
  accumulate(vb_sum_, vb_sum);
  accumulate(grad_norm_sum_, grad_norm);
  for (const auto& [name, value] : extras) {
    auto it = extra_sums_.find(name);
    if (it == extra_sums_.end()) {
      extra_sums_[name] = value.to(at::kDouble);
    } else {
      accumulate(it->second, value);
    }
  }
  steps_ += 1;
  images_ += images;
}

std::vector<std::pair<std::string, double>> LogWindow::record(int64_t step, int64_t epoch,
                                                              double lr) const {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double images = static_cast<double>(images_), steps = static_cast<double>(steps_);
  std::vector<std::pair<std::string, double>> out = {{"step", static_cast<double>(step)},
          {"epoch", static_cast<double>(epoch)},
          {"loss", loss_sum_.item<double>() / images},
          {"mse", mse_sum_.item<double>() / images},
          {"vb", vb_sum_.item<double>() / images},
          {"grad_norm", grad_norm_sum_.item<double>() / steps},
          {"lr", lr},
          {"steps_per_sec", steps / seconds},
          {"images_per_sec", images / seconds}};
  for (const auto& [name, sum] : extra_sums_) {
    auto mean = (sum / steps).to(at::kCPU).reshape({-1});
    if (sum.dim() == 0) {
      out.emplace_back(name, mean.item<double>());
    } else {
      for (int64_t i = 0; i < mean.numel(); ++i) {
        out.emplace_back(name + "." + std::to_string(i), mean[i].item<double>());
      }
    }
  }
  return out;
}

std::map<std::string, at::Tensor> LogWindow::to_tensors() const {
  auto cpu = [](const at::Tensor& t) { return t.to(at::kCPU); };
  std::map<std::string, at::Tensor> out = {{"window.loss_sum", cpu(loss_sum_)},
                                           {"window.mse_sum", cpu(mse_sum_)},
                                           {"window.vb_sum", cpu(vb_sum_)},
                                           {"window.grad_norm_sum", cpu(grad_norm_sum_)},
                                           {"window.steps", at::tensor(steps_, at::kLong)},
                                           {"window.images", at::tensor(images_, at::kLong)}};
  for (const auto& [name, sum] : extra_sums_) out["window.extra." + name] = cpu(sum);
  return out;
}

void LogWindow::from_tensors(const std::map<std::string, at::Tensor>& t) {
  auto get = [&](const char* key) {
    const auto it = t.find(key);
    if (it == t.end()) throw IoError(std::string("no tensor '") + key + "'");
    return it->second;
  };
  loss_sum_ = get("window.loss_sum");
  mse_sum_ = get("window.mse_sum");
  vb_sum_ = get("window.vb_sum");
  grad_norm_sum_ = get("window.grad_norm_sum");
  steps_ = get("window.steps").item<int64_t>();
  images_ = get("window.images").item<int64_t>();
  extra_sums_.clear();
  const std::string prefix = "window.extra.";
  for (const auto& [name, value] : t) {
    if (name.rfind(prefix, 0) == 0) extra_sums_[name.substr(prefix.size())] = value;
  }
  start_ = std::chrono::steady_clock::now();
}

}  // namespace ditlab
