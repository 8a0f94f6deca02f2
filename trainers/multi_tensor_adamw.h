// AdamW's update for every parameter at once, with multi-tensor (foreach) kernels.
// torch::optim::AdamW::step() in C++ loops over parameters with about ten kernel launches each
// (3000+ launches per step for DiT-XL/2); PyTorch's Python optimizer uses foreach kernels on
// GPUs. This is the same arithmetic on the same state (torch::optim::AdamWParamState), so
// checkpoints and resumption do not change, with a handful of launches per parameter group.
#pragma once

#include <ATen/core/Tensor.h>

namespace torch::optim {
class AdamW;
class AdamWParamState;
}

namespace ditlab {

// One optimizer step, bitwise equal to optimizer.step() on CPUs. Parameters without a gradient
// are skipped (and get no state), as there. amsgrad falls back to optimizer.step().
void multi_tensor_adamw_step(torch::optim::AdamW& optimizer);

// The parameter's state, created as its first update creates it (step 0, zero moments) when it
// has none yet.
torch::optim::AdamWParamState& adamw_state_of(torch::optim::AdamW& optimizer, const at::Tensor& p);

}  // namespace ditlab
