// Activation checkpointing: run a piece of a network without keeping its activations for
// backward, and run it again, with gradients, when backward reaches it (PyTorch's reentrant
// torch.utils.checkpoint, which LibTorch's C++ API lacks). It trades one extra forward of the
// piece for the memory of everything inside it; per transformer block that is most of a step's
// activation memory.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace ditlab {

// The piece: the same inputs must give the same output (no random draws inside). Anything it
// captures (modules) must outlive the backward pass.
using Recomputable = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

// piece(inputs) as its result, keeping only `inputs`. Gradients reach the parameters the piece
// uses (accumulated by the recomputation's own backward) and every input that requires them;
// inputs that do not (index tensors, constants) are passed through as they are. The
// recomputation sees the autocast state of the forward. Without grad mode this is a plain call.
// A parameter used by two checkpointed pieces gets its gradient in two nested backward passes,
// so its gradient hooks fire twice (the overlapping all-reduce expects one: no backbone shares
// parameters between blocks).
at::Tensor checkpointed(const Recomputable& piece, const std::vector<at::Tensor>& inputs);

}  // namespace ditlab
