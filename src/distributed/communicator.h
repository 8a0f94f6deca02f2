// The collectives the trainer needs, over c10d: a TCPStore rendezvous at MASTER_ADDR:MASTER_PORT
// (rank 0 hosts it) and a Gloo process group (CPU tensors; NCCL for CUDA is an open part of the
// distributed issue). A single process has no process group and every call is a no-op.
#pragma once
#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "src/distributed/dist_env.h"

namespace ditlab {

class Communicator {
 public:
  // Joins the job described by `env` (blocking until all ranks arrive, at most `timeout`).
  // Throws Error naming the address and the backend when that fails.
  Communicator(const DistEnv& env, const std::string& backend, std::chrono::milliseconds timeout);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }
  const DistEnv& env() const { return env_; }

  // In-place sum over ranks of one tensor. Throws Error (naming the timeout) if a peer died or
  // hung. (c10d reads a list of tensors as one per local device, so the API takes one.)
  void all_reduce_sum(at::Tensor& tensor);
  // In-place copy of `root`'s tensors to every rank (packed into one message).
  void broadcast(const std::vector<at::Tensor>& tensors, int root = 0);
  void barrier();

 private:
  struct Impl;
  DistEnv env_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ditlab
