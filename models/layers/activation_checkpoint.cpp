#include "models/layers/activation_checkpoint.h"

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <torch/autograd.h>

#include "src/common/compat.h"

namespace ditlab {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Carries the piece from forward to backward in the context's saved data (an IValue).
// Undefined inputs (an absent condition) stay out of autograd's bookkeeping: the holder puts
// them back where the piece expects them.
struct PieceHolder : torch::CustomClassHolder {
  PieceHolder(Recomputable f, std::vector<bool> defined) : piece(std::move(f)), defined(std::move(defined)) {}
  at::Tensor operator()(const std::vector<at::Tensor>& present) const {
    std::vector<at::Tensor> all;
    size_t next = 0;
    for (bool d : defined) all.push_back(d ? present[next++] : at::Tensor());
    return piece(all);
  }
  Recomputable piece;
  std::vector<bool> defined;
};

struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  // `anchor` requires grad, so that the output does even when no input does (the parameters
  // inside the piece still need their gradients: reentrant checkpointing's known trap).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& anchor, at::TensorList input_list,
                            c10::intrusive_ptr<PieceHolder> holder) {
    (void)anchor;
    const variable_list inputs = input_list.vec();
    const auto autocast = compat::autocast_state(inputs.front().device().type());
    c10::List<bool> needs_grad;
    for (const auto& input : inputs) needs_grad.push_back(input.requires_grad());
    ctx->saved_data["needs_grad"] = needs_grad;
    ctx->saved_data["autocast"] = autocast.enabled;
    ctx->saved_data["autocast_dtype"] = static_cast<int64_t>(autocast.dtype);
    ctx->saved_data["piece"] = c10::IValue::make_capsule(holder);
    ctx->save_for_backward(inputs);
    return (*holder)(inputs);  // autograd records nothing inside forward
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto needs_grad = ctx->saved_data["needs_grad"].toBoolList();
    auto holder = c10::static_intrusive_pointer_cast<PieceHolder>(ctx->saved_data["piece"].toCapsule());
    std::vector<at::Tensor> inputs;
    for (size_t i = 0; i < saved.size(); ++i) {
      inputs.push_back(needs_grad[i] ? saved[i].detach().requires_grad_(true) : saved[i]);
    }
    at::Tensor out;
    {
      torch::AutoGradMode grad_on(true);
      compat::AutocastGuard autocast(inputs.front().device().type(),
                                     static_cast<c10::ScalarType>(ctx->saved_data["autocast_dtype"].toInt()),
                                     ctx->saved_data["autocast"].toBool());
      out = (*holder)(inputs);
    }
    if (out.requires_grad()) torch::autograd::backward({out}, {grad_outputs[0]});
    variable_list grads = {at::Tensor()};  // the anchor's
    for (size_t i = 0; i < inputs.size(); ++i) grads.push_back(needs_grad[i] ? inputs[i].grad() : at::Tensor());
    grads.push_back(at::Tensor());  // the holder's
    return grads;
  }
};

}  // namespace

at::Tensor checkpointed(const Recomputable& piece, const std::vector<at::Tensor>& inputs) {
  TORCH_CHECK(!inputs.empty() && inputs.front().defined(), "checkpointed: the first input must be a tensor");
  if (!at::GradMode::is_enabled()) return piece(inputs);
  // Never destroyed: a static tensor's destructor could run after LibTorch's own at exit.
  static const at::Tensor& anchor = *new at::Tensor(at::empty({0}).requires_grad_(true));
  std::vector<at::Tensor> present;
  std::vector<bool> defined;
  for (const auto& input : inputs) {
    defined.push_back(input.defined());
    if (input.defined()) present.push_back(input);
  }
  // The list goes in as a TensorList: that is what makes autograd see its tensors as inputs.
  return CheckpointFunction::apply(anchor, at::TensorList(present),
                                   c10::make_intrusive<PieceHolder>(piece, std::move(defined)));
}

}  // namespace ditlab
