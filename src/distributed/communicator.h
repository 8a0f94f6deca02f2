// The collectives the trainer needs, over c10d: a TCPStore rendezvous at MASTER_ADDR:MASTER_PORT
// (rank 0 hosts it) and a process group: Gloo for CPU tensors, NCCL for CUDA tensors (where the
// LibTorch in use provides it). A single process has no process group and every call is a no-op.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "src/distributed/dist_env.h"

namespace ditlab {

// A collective in flight. wait() returns once its result may be used (on CUDA: once the current
// stream is ordered after it) and throws Error when a peer failed or the timeout passed.
class PendingCollective {
 public:
  PendingCollective() = default;
  explicit PendingCollective(std::function<void()> wait) : wait_(std::move(wait)) {}
  void wait() {
    if (wait_) std::exchange(wait_, nullptr)();
  }

 private:
  std::function<void()> wait_;
};

class Communicator {
 public:
  // Joins the job described by `env` (blocking until all ranks arrive, at most `timeout`).
  // `backend` is "gloo" or "nccl" ("auto" picks by `device`: nccl for cuda, gloo for cpu).
  // Throws Error naming the address and the backend when that fails, ConfigError when this
  // build lacks the backend.
  Communicator(const DistEnv& env, const std::string& backend, std::chrono::milliseconds timeout,
               bool device_is_cuda = false);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }
  // Whether collectives go through a process group: with several ranks, and under torchrun (or
  // scripts/launch.sh) even with one, as torch.distributed does, which also checks the backend
  // on a single GPU. Otherwise (one Slurm task, say) collectives are no-ops.
  bool distributed() const { return env_.world_size > 1 || env_.launcher == "torchrun"; }
  const DistEnv& env() const { return env_; }
  const std::string& backend() const { return backend_; }

  // In-place sum over ranks of one tensor. Throws Error (naming the timeout) if a peer died or
  // hung. (c10d reads a list of tensors as one per local device, so the API takes one.)
  void all_reduce_sum(at::Tensor& tensor);
  // The same, started in the background: the tensor must not be touched until wait(), and the
  // communicator must outlive the wait.
  PendingCollective all_reduce_sum_async(at::Tensor tensor);
  // Whether the backend can sum tensors of `dtype` (Gloo in LibTorch 1.13 cannot sum bf16);
  // a collective, so every rank must ask.
  bool can_sum(at::ScalarType dtype);
  // In-place copy of `root`'s tensors to every rank (packed into one message).
  void broadcast(const std::vector<at::Tensor>& tensors, int root = 0);
  void barrier();

  // The backends this build has, e.g. "gloo" or "nccl" (for error messages and docs).
  static std::vector<std::string> available_backends();

 private:
  // Throws Error for a failed collective, naming the peers that stopped answering.
  [[noreturn]] void fail(const std::string& what, const std::exception& e) const;

  struct Impl;
  DistEnv env_;
  std::string backend_;
  std::chrono::milliseconds timeout_;
  // How long Work::wait may block. NCCL's wait with a timeout spins the host until the
  // collective ends (LibTorch 2.x); without one it only orders the compute stream after it, and
  // the process group's own watchdog enforces timeout_.
  std::chrono::milliseconds wait_timeout() const;
  std::unique_ptr<Impl> impl_;
};

// Runs `section` on rank 0 only, then tells every rank whether it failed, so that the others stop
// with a message ("rank 0 failed while <what>") instead of waiting at the next collective. Rank 0
// rethrows its own error. `device` holds the flag (CUDA for NCCL).
void run_on_main_rank(Communicator& communicator, const c10::Device& device, const std::string& what,
                      const std::function<void()>& section);
// The same with `section` run on every rank: a rank whose section failed rethrows its error, the
// others stop with "N other rank(s) failed while <what>".
void run_on_every_rank(Communicator& communicator, const c10::Device& device, const std::string& what,
                       const std::function<void()>& section);

}  // namespace ditlab
