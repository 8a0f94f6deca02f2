#include "models/mup/activation_probe.h"

#include <ATen/ATen.h>

namespace ditlab {
namespace {
thread_local ActivationProbe* active_probe = nullptr;
}

ActivationProbe::ActivationProbe() : previous_(active_probe) { active_probe = this; }

ActivationProbe::~ActivationProbe() { active_probe = previous_; }

bool ActivationProbe::active() { return active_probe != nullptr; }

void ActivationProbe::record(const char* kind, const at::Tensor& activation) {
  if (active_probe == nullptr) return;
  at::Tensor mean_abs = activation.detach().abs().mean(at::kFloat);  // no host sync here
  auto& [sum, calls] = active_probe->sums_[kind];
  sum = sum.defined() ? sum + mean_abs : mean_abs;
  ++calls;
}

std::map<std::string, double> ActivationProbe::means() const {
  std::map<std::string, double> out;
  for (const auto& [kind, entry] : sums_) {
    out[kind] = entry.first.item<double>() / static_cast<double>(entry.second);
  }
  return out;
}

}  // namespace ditlab
