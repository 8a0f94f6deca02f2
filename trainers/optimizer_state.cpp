#include "trainers/optimizer_state.h"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <sstream>

#include "src/common/compat.h"
#include "src/common/error.h"

namespace ditlab {

std::map<std::string, at::Tensor> adamw_state_tensors(torch::optim::AdamW& optimizer,
                                                      const NamedParameters& parameters) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, p] : parameters) {
    auto* slot = compat::optimizer_state_if_any(optimizer, p);
    if (!slot) continue;  // never stepped (e.g. no gradient yet)
    auto& s = static_cast<torch::optim::AdamWParamState&>(*slot);
    out[name + ".exp_avg"] = s.exp_avg();
    out[name + ".exp_avg_sq"] = s.exp_avg_sq();
    out[name + ".step"] = at::tensor(s.step(), at::TensorOptions().dtype(at::kLong));
  }
  return out;
}

void load_adamw_state(torch::optim::AdamW& optimizer, const NamedParameters& parameters,
                      const std::map<std::string, at::Tensor>& tensors, const std::string& source) {
  auto get = [&](const std::string& key, const at::Tensor& like) -> at::Tensor {
    auto it = tensors.find(key);
    if (it == tensors.end()) throw ShapeError(source + ": optimizer state lacks '" + key + "'");
    if (like.defined() && it->second.sizes() != like.sizes()) {
      std::ostringstream msg;
      msg << source << ": optimizer state '" << key << "' has shape " << it->second.sizes()
          << ", the parameter has " << like.sizes();
      throw ShapeError(msg.str());
    }
    return it->second;
  };
  size_t expected = 0;
  for (const auto& [name, p] : parameters) {
    if (!tensors.count(name + ".step")) continue;  // this parameter had no state yet
    expected += 3;
    auto state = std::make_unique<torch::optim::AdamWParamState>();
    state->step(get(name + ".step", {}).item<int64_t>());
    state->exp_avg(get(name + ".exp_avg", p).to(p.device(), p.scalar_type()).clone());
    state->exp_avg_sq(get(name + ".exp_avg_sq", p).to(p.device(), p.scalar_type()).clone());
    compat::optimizer_state_slot(optimizer, p) = std::move(state);
  }
  if (expected != tensors.size()) {
    throw ShapeError(source + ": optimizer state holds " + std::to_string(tensors.size()) +
                     " tensors, the model's parameters account for " + std::to_string(expected) +
                     " (state of unknown parameters?)");
  }
}

}  // namespace ditlab
