// The one place where LibTorch version differences live (Debian's 1.13 on CPUs, 2.x with CUDA).
// Everything else in ditlab calls these functions and never tests TORCH_VERSION itself.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/version.h>

#include <c10/util/string_utils.h>

#include <string>
#include <type_traits>

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

// The optimizer's per-parameter state slot. LibTorch keys Optimizer::state() by the parameter's
// TensorImpl address, as a string in 1.x and as a pointer in later versions; this hides which.
template <class Optimizer>
auto& optimizer_state_slot(Optimizer& optimizer, const at::Tensor& parameter) {
  auto& state = optimizer.state();
  using Key = typename std::decay_t<decltype(state)>::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    return state[c10::guts::to_string(parameter.unsafeGetTensorImpl())];
  } else {
    return state[reinterpret_cast<Key>(parameter.unsafeGetTensorImpl())];
  }
}

// Whether train.precision=auto picks bf16 autocast on this device: on CUDA yes, on CPUs no (bf16
// matrix products are slower than fp32 there).
bool bf16_supported(const c10::Device& device);

}  // namespace ditlab::compat
