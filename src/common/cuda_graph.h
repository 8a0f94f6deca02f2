// Whole-step CUDA graphs: the kernels of a step recorded once and replayed. A replay is one
// launch instead of thousands, so small models stop being bound by the host's launch rate and
// the gaps between kernels. What is recorded is fixed: the same tensors (addresses), shapes and
// scalar arguments every replay, so inputs are copied into the tensors the capture read, and
// anything that changes per step (learning rate, EMA decay) lives in a device tensor. Builds
// without CUDA have the class, but constructing one throws.
#pragma once
#include <c10/core/Device.h>

#include <functional>
#include <memory>

namespace ditlab {

class CudaGraph {
 public:
  explicit CudaGraph(c10::Device device);
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Runs `body` on a side stream and makes the current stream wait for it. Capture needs this
  // warm-up: first calls initialise libraries and allocate workspaces, which a capture forbids.
  void warm_up(const std::function<void()>& body);
  // Records the work `body` queues, without running it. Memory it allocates belongs to the graph
  // and stays valid for its replays.
  void capture(const std::function<void()>& body);
  bool captured() const;
  // Queues the recorded work on the current stream.
  void replay();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ditlab
