#include "src/common/compat.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <sys/resource.h>

#include <map>
#include <torch/cuda.h>

#ifdef DITLAB_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace ditlab::compat {

#define DITLAB_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||         \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, double scale) {
#if DITLAB_TORCH_AT_LEAST(2, 1)
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                          /*is_causal=*/false, scale);
#else
  // [N, H, Tq, Dh] x [N, H, Dh, Tk] -> [N, H, Tq, Tk]
  auto weights = at::matmul(q * scale, k.transpose(-2, -1)).softmax(-1);
  return at::matmul(weights, v);  // [N, H, Tq, Dh]
#endif
}

void foreach_mul_(const std::vector<at::Tensor>& tensors, const at::Tensor& factor) {
#if DITLAB_TORCH_AT_LEAST(2, 1)
  // The fused kernel wants one dtype per list, and the factor in it.
  std::map<c10::ScalarType, std::vector<at::Tensor>> by_dtype;
  for (const auto& t : tensors) by_dtype[t.scalar_type()].push_back(t);
  for (auto& [dtype, list] : by_dtype) at::_foreach_mul_(list, factor.to(dtype));
#else
  for (const auto& t : tensors) t.mul_(factor.to(t.scalar_type()));
#endif
}

void foreach_copy_(const std::vector<at::Tensor>& dst, const std::vector<at::Tensor>& src) {
#if DITLAB_TORCH_AT_LEAST(2, 2)
  at::_foreach_copy_(dst, src);
#else
  for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(src[i]);
#endif
}

bool fused_adamw_supported() { return DITLAB_TORCH_AT_LEAST(2, 4); }

void fused_adamw_(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                  const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& exp_avg_sqs,
                  const std::vector<at::Tensor>& steps, const at::Tensor& lr, double beta1,
                  double beta2, double weight_decay, double eps, const at::Tensor& found_inf) {
#if DITLAB_TORCH_AT_LEAST(2, 4)
  at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr, beta1,
                    beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false,
                    /*grad_scale=*/{}, found_inf);
#else
  TORCH_CHECK(false, "fused AdamW needs LibTorch 2.4 or newer; this is ", torch_version());
#endif
}

namespace {
#if DITLAB_TORCH_AT_LEAST(2, 4)
bool autocast_enabled(c10::DeviceType d) { return at::autocast::is_autocast_enabled(d); }
void set_autocast_enabled(c10::DeviceType d, bool on) { at::autocast::set_autocast_enabled(d, on); }
c10::ScalarType autocast_dtype(c10::DeviceType d) { return at::autocast::get_autocast_dtype(d); }
void set_autocast_dtype(c10::DeviceType d, c10::ScalarType t) {
  at::autocast::set_autocast_dtype(d, t);
}
#else
bool autocast_enabled(c10::DeviceType d) {
  return d == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
void set_autocast_enabled(c10::DeviceType d, bool on) {
  if (d == c10::DeviceType::CUDA) {
    at::autocast::set_enabled(on);
  } else {
    at::autocast::set_cpu_enabled(on);
  }
}
c10::ScalarType autocast_dtype(c10::DeviceType d) {
  return d == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype()
                                    : at::autocast::get_autocast_cpu_dtype();
}
void set_autocast_dtype(c10::DeviceType d, c10::ScalarType t) {
  if (d == c10::DeviceType::CUDA) {
    at::autocast::set_autocast_gpu_dtype(t);
  } else {
    at::autocast::set_autocast_cpu_dtype(t);
  }
}
#endif
}  // namespace

AutocastState autocast_state(c10::DeviceType device) {
  return {autocast_enabled(device), autocast_dtype(device)};
}

AutocastGuard::AutocastGuard(c10::DeviceType device, c10::ScalarType dtype, bool enabled)
    : device_(device), enabled_(enabled) {
  if (!enabled_) return;
  previous_ = autocast_enabled(device_);
  previous_dtype_ = autocast_dtype(device_);
  set_autocast_dtype(device_, dtype);
  set_autocast_enabled(device_, true);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!enabled_) return;
  // Leaving the outermost autocast region frees the cast-weight cache, as Python's autocast does.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast_enabled(device_, previous_);
  set_autocast_dtype(device_, previous_dtype_);
}

void set_cuda_tf32(bool on) {
  static bool cudnn_turned_off = false;
  at::globalContext().setAllowTF32CuBLAS(on);
  if (on == cudnn_turned_off) {
    at::globalContext().setAllowTF32CuDNN(on);
    cudnn_turned_off = !on;
  }
}

bool cuda_tf32() {
  return at::globalContext().float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
}

bool bf16_supported(const c10::Device& device) {
  return device.is_cuda();
}

std::string device_name(const c10::Device& device) {
#ifdef DITLAB_WITH_CUDA
  if (device.is_cuda()) {
    return at::cuda::getDeviceProperties(device.has_index() ? device.index() : 0)->name;
  }
#endif
  return device.str();
}

void set_current_device(const c10::Device& device) {
#ifdef DITLAB_WITH_CUDA
  if (device.is_cuda() && device.has_index()) c10::cuda::set_device(device.index());
#endif
}

void synchronize(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
}

int64_t peak_memory_bytes(const c10::Device& device) {
#ifdef DITLAB_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    return stats.allocated_bytes[0].peak;  // index 0: StatType::AGGREGATE (all pools)
  }
#endif
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // kilobytes on Linux
}

int64_t peak_reserved_memory_bytes(const c10::Device& device) {
#ifdef DITLAB_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    return stats.reserved_bytes[0].peak;  // index 0: StatType::AGGREGATE (all pools)
  }
#endif
  return -1;
}

void reset_peak_memory(const c10::Device& device) {
#ifdef DITLAB_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
#endif
}

}  // namespace ditlab::compat
