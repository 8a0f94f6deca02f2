// Parameters of assorted shapes (a matrix, a vector, a 3-d tensor, a scalar-like one) for the
// AdamW tests, and detached copies of them for a second optimizer to step alike.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace ditlab::testing {

inline std::vector<at::Tensor> make_parameters(uint64_t seed) {
  at::manual_seed(seed);
  std::vector<at::Tensor> out;
  for (auto shape : {std::vector<int64_t>{7, 5}, {5}, {3, 4, 2}, {1}}) {
    out.push_back(at::randn(shape).set_requires_grad(true));
  }
  return out;
}

inline std::vector<at::Tensor> copies(const std::vector<at::Tensor>& ps) {
  std::vector<at::Tensor> out;
  for (const auto& p : ps) out.push_back(p.detach().clone().set_requires_grad(true));
  return out;
}

}  // namespace ditlab::testing
