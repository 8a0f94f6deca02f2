// Activation checkpointing of one DiM block. The selective scan keeps state tensors of
// [batch, 2D, L, 16] per block for backward, far more than attention's activations; a
// checkpointed block keeps only its input and runs again, with gradients, during backward
// (PyTorch's reentrant torch.utils.checkpoint, which LibTorch's C++ API lacks).
#pragma once
#include <ATen/core/Tensor.h>

namespace ditlab {

class DiMBlockImpl;

// block.forward(r, c3, order, inverse) without stored activations. Parameter gradients are
// accumulated by the recomputation's own backward; r and c3 get theirs through the graph.
at::Tensor checkpointed_block(DiMBlockImpl& block, const at::Tensor& r, const at::Tensor& c3,
                              const at::Tensor& order, const at::Tensor& inverse);

}  // namespace ditlab
