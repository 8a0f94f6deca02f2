// Global gradient norm and clipping without a host synchronisation: the norm stays a device
// tensor, and the clip factor min(1, max_norm / (norm + 1e-6)) is applied as a tensor too.
// (torch::nn::utils::clip_grad_norm_ returns a double, i.e. waits for the GPU every step.)
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

namespace ditlab {

// Returns the L2 norm over all gradients (before clipping), a 0-d float tensor. max_norm <= 0
// measures without clipping. Parameters without a gradient are skipped.
at::Tensor clip_grad_norm(const std::vector<at::Tensor>& parameters, double max_norm);

}  // namespace ditlab
