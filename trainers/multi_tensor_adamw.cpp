#include "trainers/multi_tensor_adamw.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/optim/adamw.h>

#include <cmath>
#include <map>
#include <vector>

#include "src/common/compat.h"

namespace ditlab {
namespace {

// The tensors of the parameters that share one step count (the bias corrections depend on it).
struct Lists {
  std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs;
  std::vector<torch::optim::AdamWParamState*> states;
};

}  // namespace

torch::optim::AdamWParamState& adamw_state_of(torch::optim::AdamW& optimizer, const at::Tensor& p) {
  auto& slot = compat::optimizer_state_slot(optimizer, p);
  if (!slot) {
    auto state = std::make_unique<torch::optim::AdamWParamState>();
    state->step(0);
    state->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
    state->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
    slot = std::move(state);
  }
  return static_cast<torch::optim::AdamWParamState&>(*slot);
}

void multi_tensor_adamw_step(torch::optim::AdamW& optimizer) {
  torch::NoGradGuard no_grad;
  // Decided before any group steps: a fallback after a first group would step it twice.
  for (auto& group : optimizer.param_groups()) {
    if (static_cast<const torch::optim::AdamWOptions&>(group.options()).amsgrad()) {
      optimizer.step();
      return;
    }
  }
  for (auto& group : optimizer.param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    std::map<int64_t, Lists> by_step;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto* state = &adamw_state_of(optimizer, p);
      Lists& lists = by_step[state->step()];
      lists.params.push_back(p);
      lists.grads.push_back(p.grad());
      lists.exp_avgs.push_back(state->exp_avg());
      lists.exp_avg_sqs.push_back(state->exp_avg_sq());
      lists.states.push_back(state);
    }
    const double lr = options.lr(), eps = options.eps(), weight_decay = options.weight_decay();
    const double beta1 = std::get<0>(options.betas()), beta2 = std::get<1>(options.betas());
    for (auto& [previous_step, l] : by_step) {
      const int64_t step = previous_step + 1;
      for (auto* state : l.states) state->step(step);
      // The order of operations is torch::optim::AdamW's, so that results agree bit for bit.
      if (weight_decay != 0) at::_foreach_mul_(l.params, 1 - lr * weight_decay);
      const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(step));
      const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(step));
      at::_foreach_mul_(l.exp_avgs, beta1);
      at::_foreach_add_(l.exp_avgs, l.grads, 1 - beta1);
      at::_foreach_mul_(l.exp_avg_sqs, beta2);
      at::_foreach_addcmul_(l.exp_avg_sqs, l.grads, l.grads, 1 - beta2);
      auto denom = at::_foreach_sqrt(l.exp_avg_sqs);
      at::_foreach_div_(denom, std::sqrt(bias_correction2));
      at::_foreach_add_(denom, eps);
      at::_foreach_addcdiv_(l.params, l.exp_avgs, denom, -lr / bias_correction1);
    }
  }
}

}  // namespace ditlab
