// Linear whose forward is at::linear. The C++ frontend's functional linear runs
// inputs of more than two dimensions as a matmul followed by a separate bias add (an extra pass
// over the output, and its own backward); at::linear, which PyTorch's Python modules call, does
// one addmm on the flattened tokens. Measured on DiT-S/4 (docs/benchmarks.md). Same parameters,
// same names, same initialisation as Linear. As a µP readout its input is scaled (mup_modules.h).
#pragma once
#include <torch/nn/modules/linear.h>

#include "models/mup/mup_modules.h"

namespace ditlab {

class LinearImpl : public torch::nn::LinearImpl, public MupReadout {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  at::Tensor forward(const at::Tensor& input) {
    // W (c x) + b as (c W) x + b: the weight is the smaller tensor to scale.
    if (readout_multiplier == 1.0) return at::linear(input, weight, bias);
    return at::linear(input, weight * readout_multiplier, bias);
  }
};
TORCH_MODULE(Linear);

}  // namespace ditlab
