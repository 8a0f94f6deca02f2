#include "src/common/cuda_graph.h"

#include "src/common/error.h"

#ifdef DITLAB_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ditlab {

#ifdef DITLAB_WITH_CUDA

struct CudaGraph::Impl {
  explicit Impl(c10::Device device)
      : guard(device), side(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {}

  // body on the side stream, ordered after the current stream's work and before its next.
  void on_side_stream(const std::function<void()>& body) {
    c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
    at::cuda::CUDAEvent ready;
    ready.record(current);
    ready.block(side);
    {
      c10::cuda::CUDAStreamGuard on_side(side);
      body();
    }
    at::cuda::CUDAEvent done;
    done.record(side);
    done.block(current);
  }

  c10::cuda::CUDAGuard guard;
  c10::cuda::CUDAStream side;
  at::cuda::CUDAGraph graph;
  bool captured = false;
};

CudaGraph::CudaGraph(c10::Device device) {
  if (!device.is_cuda()) throw ConfigError("CUDA graphs need a CUDA device, not " + device.str());
  impl_ = std::make_unique<Impl>(device.has_index() ? device : c10::Device(c10::kCUDA, 0));
}

void CudaGraph::warm_up(const std::function<void()>& body) { impl_->on_side_stream(body); }

void CudaGraph::capture(const std::function<void()>& body) {
  // The warm-up's freed blocks stay cached for the side stream, and the recording allocates its
  // own pool: return them first, as PyTorch's torch.cuda.graph does (and a recording cannot
  // free cached blocks to make room).
  c10::cuda::device_synchronize();
  c10::cuda::CUDACachingAllocator::emptyCache();
  impl_->on_side_stream([&] {
    // Thread-local capture mode: the data loader's and the draws' threads may allocate
    // page-locked memory meanwhile, which the global mode would forbid. Autograd's thread
    // queues backward on the capturing stream and is recorded with it.
    impl_->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    try {
      body();
    } catch (...) {
      try {
        impl_->graph.capture_end();
      } catch (...) {
      }
      throw;
    }
    impl_->graph.capture_end();
  });
  impl_->captured = true;
}

bool CudaGraph::captured() const { return impl_->captured; }

void CudaGraph::replay() { impl_->graph.replay(); }

#else

struct CudaGraph::Impl {};

CudaGraph::CudaGraph(c10::Device device) {
  throw ConfigError("CUDA graphs (train.cuda_graph) need a CUDA build of ditlab; this one is CPU-only");
}

void CudaGraph::warm_up(const std::function<void()>&) {}
void CudaGraph::capture(const std::function<void()>&) {}
bool CudaGraph::captured() const { return false; }
void CudaGraph::replay() {}

#endif

CudaGraph::~CudaGraph() = default;

}  // namespace ditlab
