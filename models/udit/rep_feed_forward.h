// U-DiT's feed-forward network (FeedForward with ffn_type 'rep'), on [N, d, H, W] maps.
// Training form: two stacked 1x1 convs d -> h/2 -> h (no activation between), exact GELU, then
// a + DW5x5(a) + DW3x3(a) + DW1x1(a), then two stacked 1x1 convs h -> h/2 -> d (h = d * ratio).
// Inference form (what the module runs when not training): each pair of 1x1 convs is one
// 1x1 conv (W2 W1, W2 b1 + b2) and the identity and the three depthwise convs are one 5x5
// depthwise conv. The folded tensors are built apart from the parameters, which they never
// modify (the official add_buffer() adds into the live 5x5 kernel through detach()), and are
// rebuilt whenever a parameter changed since.
#pragma once
#include "models/mup/width_roles.h"
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>

#include <vector>

namespace ditlab {

class RepFeedForwardImpl : public torch::nn::Module {
 public:
  RepFeedForwardImpl(int64_t dim, double ratio);
  at::Tensor forward(const at::Tensor& x);
  void declare_width_roles(WidthRoles roles) const;

  struct Folded {
    at::Tensor in_weight, in_bias;          // [h, d, 1, 1], [h]
    at::Tensor dw_weight, dw_bias;          // [h, 1, 5, 5], [h]
    at::Tensor out_weight, out_bias;        // [d, h, 1, 1], [d]
    int64_t numel() const;
  };
  // The inference tensors for the current parameters (no gradient).
  Folded fold() const;

  at::Tensor forward_training_form(const at::Tensor& x);
  at::Tensor forward_inference_form(const at::Tensor& x);

  int64_t hidden;
  torch::nn::Sequential project_in{nullptr}, project_out{nullptr};
  torch::nn::ModuleList dwconv{nullptr};  // 5x5, 3x3, 1x1 depthwise

 private:
  std::vector<int64_t> parameter_versions() const;
  Folded folded_;
  std::vector<int64_t> folded_versions_;
};
TORCH_MODULE(RepFeedForward);

}  // namespace ditlab
