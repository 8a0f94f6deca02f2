// AdamW's state as named tensors, keyed by the parameter's state-dict name, so it can be stored
// in safetensors and restored into a freshly built optimizer.
//   <name>.exp_avg, <name>.exp_avg_sq: the moments; <name>.step: int64 scalar.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

namespace torch::optim {
class AdamW;
}

namespace ditlab {

using NamedParameters = std::vector<std::pair<std::string, at::Tensor>>;

std::map<std::string, at::Tensor> adamw_state_tensors(torch::optim::AdamW& optimizer,
                                                      const NamedParameters& parameters);

// Restores the state written by adamw_state_tensors; a missing or mis-shaped entry is a
// ShapeError naming it and `source`.
void load_adamw_state(torch::optim::AdamW& optimizer, const NamedParameters& parameters,
                      const std::map<std::string, at::Tensor>& tensors, const std::string& source);

}  // namespace ditlab
