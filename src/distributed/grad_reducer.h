// Sums gradients over ranks after backward, in buckets of about `bucket_bytes` (default 25 MB,
// as PyTorch's DDP), packed in reverse parameter order (the order backward produces them).
// A parameter that received no gradient on a rank (an expert without tokens) contributes zeros,
// so every rank runs the same collectives and none waits forever. One process: a no-op.
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

#include "src/distributed/communicator.h"

namespace ditlab {

class GradReducer {
 public:
  GradReducer(std::vector<at::Tensor> parameters, Communicator& communicator, int64_t bucket_bytes);

  // After backward: every parameter's .grad() becomes the sum over ranks.
  void reduce();

  size_t num_buckets() const { return buckets_.size(); }

 private:
  std::vector<at::Tensor> parameters_;
  Communicator& communicator_;
  std::vector<std::vector<size_t>> buckets_;  // indices into parameters_
};

}  // namespace ditlab
