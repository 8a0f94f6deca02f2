#include "models/dim/block_checkpoint.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "models/dim/dim.h"
#include "src/common/compat.h"

namespace ditlab {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct CheckpointedBlock : public torch::autograd::Function<CheckpointedBlock> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& r, const at::Tensor& c3,
                            const at::Tensor& order, const at::Tensor& inverse, int64_t block_address) {
    auto* block = reinterpret_cast<DiMBlockImpl*>(block_address);
    // The recomputation must see the same autocast casts as this forward.
    const auto autocast = compat::autocast_state(r.device().type());
    ctx->saved_data["block"] = block_address;
    ctx->saved_data["autocast"] = autocast.enabled;
    ctx->saved_data["autocast_dtype"] = static_cast<int64_t>(autocast.dtype);
    ctx->save_for_backward({r, c3, order, inverse});
    return block->forward(r, c3, order, inverse);  // autograd records nothing inside forward
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    auto* block = reinterpret_cast<DiMBlockImpl*>(ctx->saved_data["block"].toInt());
    auto r = saved[0].detach().requires_grad_(true);
    auto c3 = saved[1].detach().requires_grad_(true);
    at::Tensor out;
    {
      torch::AutoGradMode grad_on(true);
      compat::AutocastGuard autocast(r.device().type(),
                                     static_cast<c10::ScalarType>(ctx->saved_data["autocast_dtype"].toInt()),
                                     ctx->saved_data["autocast"].toBool());
      out = block->forward(r, c3, saved[2], saved[3]);
    }
    torch::autograd::backward({out}, {grad_outputs[0]});
    return {r.grad(), c3.grad(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor checkpointed_block(DiMBlockImpl& block, const at::Tensor& r, const at::Tensor& c3,
                              const at::Tensor& order, const at::Tensor& inverse) {
  return CheckpointedBlock::apply(r, c3, order, inverse, reinterpret_cast<int64_t>(&block));
}

}  // namespace ditlab
