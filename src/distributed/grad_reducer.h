// Sums gradients over ranks in buckets of about `bucket_bytes` (default 25 MB, as PyTorch's DDP),
// packed in reverse parameter order (the order backward produces them). With `overlap`, a bucket
// starts its all-reduce from an autograd hook as soon as backward has produced all of its
// gradients, while backward goes on with earlier layers; reduce() then only waits for what is
// still in flight. Buckets always start in the same order on every rank (a ready bucket waits
// for the ones before it), because c10d matches collectives by their order.
// A parameter that received no gradient on a rank (an expert without tokens) contributes zeros
// at the end, so every rank runs the same collectives and none waits forever.
// One process: a no-op.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <vector>

#include "src/distributed/communicator.h"

namespace ditlab {

struct GradReducerOptions {
  int64_t bucket_bytes = int64_t{25} << 20;
  // The dtype on the wire; Undefined = each parameter's own. BFloat16 halves the traffic of
  // fp32 gradients (the sum is then rounded to bf16's 8 mantissa bits).
  at::ScalarType reduce_dtype = at::ScalarType::Undefined;
  bool overlap = true;
};

class GradReducer {
 public:
  GradReducer(std::vector<at::Tensor> parameters, Communicator& communicator,
              GradReducerOptions options);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Call before the backward pass that completes this step's gradients (the last micro-batch
  // of gradient accumulation): its hooks then start the buckets as they fill.
  void expect_final_backward();
  // After that backward: every parameter's .grad() becomes the sum over ranks.
  void reduce();

  size_t num_buckets() const;
  int64_t bucket_bytes_on_wire() const;  // all buckets together, per step
  // Time reduce() spent waiting for communication that backward did not hide, summed over calls.
  double exposed_seconds() const;
  // Buckets whose all-reduce a backward hook started (overlapped), summed over calls.
  int64_t buckets_started_during_backward() const;

 private:
  struct State;
  std::shared_ptr<State> state_;  // shared with the autograd hooks, which hold it weakly
  std::vector<unsigned> hook_handles_;
};

}  // namespace ditlab
