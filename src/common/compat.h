// The one place where LibTorch version differences live (Debian's 1.13 on CPUs, 2.x with CUDA).
// Everything else in ditlab calls these functions and never tests TORCH_VERSION itself.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/version.h>

#include <string>

namespace ditlab::compat {

// "1.13.0" and so on, for run directories and logs.
std::string torch_version();

// softmax(q k^T * scale) v over [N, H, T, Dh] tensors. LibTorch 2.x dispatches to fused
// (flash / memory-efficient) kernels; 1.13 has no public fused entry point, so it is spelled out.
at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, double scale);

// Mixed precision: turns autocast on for `device` with `dtype`, off again when destroyed.
// A disabled guard does nothing, so callers need no branch.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, c10::ScalarType dtype, bool enabled);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType device_;
  bool enabled_;
  bool previous_;
  c10::ScalarType previous_dtype_;
};

// Whether train.precision=auto picks bf16 autocast on this device: on CUDA yes, on CPUs no (bf16
// matrix products are slower than fp32 there).
bool bf16_supported(const c10::Device& device);

}  // namespace ditlab::compat
