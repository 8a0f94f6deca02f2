// Linear whose forward is at::linear. The C++ frontend's functional linear runs
// inputs of more than two dimensions as a matmul followed by a separate bias add (an extra pass
// over the output, and its own backward); at::linear, which PyTorch's Python modules call, does
// one addmm on the flattened tokens. Measured on DiT-S/4 (docs/benchmarks.md). Same parameters,
// same names, same initialisation as Linear.
#pragma once
#include <torch/nn/modules/linear.h>

namespace ditlab {

class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  at::Tensor forward(const at::Tensor& input) { return at::linear(input, weight, bias); }
};
TORCH_MODULE(Linear);

}  // namespace ditlab
