#include "src/common/host_copy.h"

#include <ATen/ATen.h>

#ifdef DITLAB_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace ditlab {

HostCopy::HostCopy(const at::Tensor& value) {
#ifdef DITLAB_WITH_CUDA
  if (value.is_cuda()) {
    // The copy goes on the value's device's current stream, and the event after it there.
    const c10::cuda::CUDAGuard on_device(value.device());
    host_ = at::empty(value.sizes(), value.options().device(at::kCPU).pinned_memory(true));
    host_.copy_(value, /*non_blocking=*/true);
    auto done = std::make_shared<at::cuda::CUDAEvent>();
    done->record();  // on the current stream, behind the copy
    pending_ = std::move(done);
    return;
  }
#endif
  host_ = value.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
}

const at::Tensor& HostCopy::get() const {
#ifdef DITLAB_WITH_CUDA
  if (pending_) {
    static_cast<at::cuda::CUDAEvent*>(pending_.get())->synchronize();
    pending_.reset();
  }
#endif
  return host_;
}

}  // namespace ditlab
