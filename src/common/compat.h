// The one place where LibTorch version differences live (Debian's 1.13 on CPUs, 2.x with CUDA).
// Everything else in ditlab calls these functions and never tests TORCH_VERSION itself.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/version.h>

#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace ditlab::compat {

// "1.13.0" and so on, for run directories and logs.
std::string torch_version();

// softmax(q k^T * scale) v over [N, H, T, Dh] tensors. LibTorch 2.x dispatches to fused
// (flash / memory-efficient) kernels; 1.13 has no public fused entry point, so it is spelled out.
at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, double scale);

// tensors[i] *= factor (a 0-dim tensor on their device), without reading the factor back: one
// multi-tensor kernel per dtype on LibTorch 2.1+ (_foreach_mul_ by a tensor), a loop before.
void foreach_mul_(const std::vector<at::Tensor>& tensors, const at::Tensor& factor);

// AdamW over lists of parameters of one dtype on one device, with PyTorch's fused kernel: the
// learning rate is read from `lr` and the whole update skipped where `found_inf` is 1 (both 0-dim
// float tensors on that device), so the step reads nothing back. `steps` (one float tensor per
// parameter, may repeat) must already count this update. LibTorch 2.4+ only (CUDA and CPUs);
// fused_adamw_supported() says whether this build has it.
bool fused_adamw_supported();
void fused_adamw_(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                  const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& exp_avg_sqs,
                  const std::vector<at::Tensor>& steps, const at::Tensor& lr, double beta1,
                  double beta2, double weight_decay, double eps, const at::Tensor& found_inf);

// dst[i].copy_(src[i]) in one multi-tensor kernel on LibTorch 2.2+, a loop before.
void foreach_copy_(const std::vector<at::Tensor>& dst, const std::vector<at::Tensor>& src);

// Mixed precision: turns autocast on for `device` with `dtype`, off again when destroyed.
// A disabled guard does nothing, so callers need no branch.
// Whether autocast is on for `device`, and its dtype (for code that re-runs a forward later,
// such as activation checkpointing, which must reproduce the same casts).
struct AutocastState {
  bool enabled = false;
  c10::ScalarType dtype = c10::ScalarType::BFloat16;
};
AutocastState autocast_state(c10::DeviceType device);

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

// The optimizer's per-parameter state. LibTorch keys Optimizer::state() by the parameter's
// TensorImpl address, as a string in 1.x and as a pointer in later versions; this hides which.
template <class Optimizer>
auto optimizer_state_key(Optimizer& optimizer, const at::Tensor& parameter) {
  using Key = typename std::decay_t<decltype(optimizer.state())>::key_type;
  void* impl = parameter.unsafeGetTensorImpl();
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;  // what 1.x's c10::guts::to_string(pointer) wrote
    key << impl;
    return key.str();
  } else {
    return static_cast<Key>(impl);
  }
}

// The slot, created empty when absent. (LibTorch's own step() reads an empty slot as state and
// crashes: only fill it, never leave it empty where that optimizer steps.)
template <class Optimizer>
auto& optimizer_state_slot(Optimizer& optimizer, const at::Tensor& parameter) {
  return optimizer.state()[optimizer_state_key(optimizer, parameter)];
}

// The state, or null when the parameter has none yet; inserts nothing.
template <class Optimizer>
auto* optimizer_state_if_any(Optimizer& optimizer, const at::Tensor& parameter) {
  auto& state = optimizer.state();
  auto it = state.find(optimizer_state_key(optimizer, parameter));
  return it == state.end() ? nullptr : it->second.get();
}

// Whether train.precision=auto picks bf16 autocast on this device: on CUDA yes, on CPUs no (bf16
// matrix products are slower than fp32 there).
bool bf16_supported(const c10::Device& device);

// TF32 tensor cores for float32 matrix products (cuBLAS) and convolutions (cuDNN) on CUDA
// (train.tf32). Switched through the calls that exist from 1.13 on; LibTorch 2.9 replaced them
// with per-backend fp32 precisions and warns once when setAllowTF32CuDNN is called, so cuDNN's
// switch (on by default) is touched only to turn it off and back.
void set_cuda_tf32(bool on);
// Whether float32 matrix products on CUDA may use TF32.
bool cuda_tf32();

// The GPU's name ("NVIDIA H100 80GB HBM3"); "cuda" in builds without CUDA.
std::string device_name(const c10::Device& device);

// Makes `device` the current CUDA device of this thread (a rank's own GPU), so that what uses the
// current device (streams, events, page-locked allocations, NCCL) does not open a context on
// GPU 0; nothing elsewhere.
void set_current_device(const c10::Device& device);

// Waits for the device's queued work (a no-op on CPUs), so that wall-clock timers measure it.
void synchronize(const c10::Device& device);

// Peak memory since reset_peak_memory(): on CUDA, bytes held by tensors (the caching
// allocator's peak of allocated bytes); on CPUs, the process's peak resident set, which cannot
// be reset and includes everything the process ever touched.
int64_t peak_memory_bytes(const c10::Device& device);
// On CUDA, the caching allocator's peak of reserved bytes (its segments, a CUDA graph's private
// pool included) since reset_peak_memory(); -1 on CPUs.
int64_t peak_reserved_memory_bytes(const c10::Device& device);
void reset_peak_memory(const c10::Device& device);

}  // namespace ditlab::compat
