#include "models/udit/rep_feed_forward.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/modules/conv.h>

#include "src/common/error.h"
#include "models/mup/activation_probe.h"

namespace ditlab {
namespace {
torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t groups = 1) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).padding(kernel / 2).groups(groups));
}
torch::nn::Conv2dImpl& conv_at(const torch::nn::Sequential& seq, size_t i) {
  return *seq->ptr(i)->as<torch::nn::Conv2dImpl>();
}
}  // namespace

RepFeedForwardImpl::RepFeedForwardImpl(int64_t dim, double ratio)
    : hidden(static_cast<int64_t>(dim * ratio)) {
  if (hidden < 2 || hidden % 2 != 0) {
    throw ConfigError("u-dit: the FFN width " + std::to_string(hidden) + " (width x model.mlp_ratio) "
                      "must be even");
  }
  project_in = register_module("project_in",
                               torch::nn::Sequential(conv(dim, hidden / 2, 1), conv(hidden / 2, hidden, 1)));
  dwconv = register_module("dwconv", torch::nn::ModuleList(conv(hidden, hidden, 5, hidden),
                                                           conv(hidden, hidden, 3, hidden),
                                                           conv(hidden, hidden, 1, hidden)));
  project_out = register_module("project_out",
                                torch::nn::Sequential(conv(hidden, hidden / 2, 1), conv(hidden / 2, dim, 1)));
}

void RepFeedForwardImpl::declare_width_roles(WidthRoles roles) const {
  for (const char* name : {"project_in.0", "project_in.1", "project_out.0", "project_out.1"}) {
    roles.layer(name, WidthRole::kHidden, InitLaw::kXavier);
  }
  for (const char* name : {"dwconv.0", "dwconv.1", "dwconv.2"}) {
    roles.layer(name, WidthRole::kVector, InitLaw::kXavier);  // depthwise
  }
}

at::Tensor RepFeedForwardImpl::forward_training_form(const at::Tensor& x) {
  auto a = at::gelu(project_in->forward(x));
  auto sum = a;
  for (const auto& branch : *dwconv) sum = sum + branch->as<torch::nn::Conv2dImpl>()->forward(a);
  return project_out->forward(sum);
}

RepFeedForwardImpl::Folded RepFeedForwardImpl::fold() const {
  torch::NoGradGuard no_grad;
  auto fuse = [](const torch::nn::Conv2dImpl& first, const torch::nn::Conv2dImpl& second) {
    auto w1 = first.weight.flatten(1), w2 = second.weight.flatten(1);  // [o1, i], [o2, o1]
    auto weight = at::matmul(w2, w1).unsqueeze(-1).unsqueeze(-1);
    auto bias = at::matmul(w2, first.bias) + second.bias;
    return std::make_pair(weight, bias);
  };
  Folded f;
  std::tie(f.in_weight, f.in_bias) = fuse(conv_at(project_in, 0), conv_at(project_in, 1));
  std::tie(f.out_weight, f.out_bias) = fuse(conv_at(project_out, 0), conv_at(project_out, 1));
  const auto& dw5 = *dwconv->ptr(0)->as<torch::nn::Conv2dImpl>();
  const auto& dw3 = *dwconv->ptr(1)->as<torch::nn::Conv2dImpl>();
  const auto& dw1 = *dwconv->ptr(2)->as<torch::nn::Conv2dImpl>();
  f.dw_weight = dw5.weight.clone();  // a copy: the parameters stay as they are
  f.dw_weight.narrow(2, 1, 3).narrow(3, 1, 3).add_(dw3.weight);
  f.dw_weight.narrow(2, 2, 1).narrow(3, 2, 1).add_(dw1.weight + 1.0);  // + the identity
  f.dw_bias = dw5.bias + dw3.bias + dw1.bias;
  return f;
}

int64_t RepFeedForwardImpl::Folded::numel() const {
  int64_t n = 0;
  for (const auto* t : {&in_weight, &in_bias, &dw_weight, &dw_bias, &out_weight, &out_bias}) {
    n += t->numel();
  }
  return n;
}

std::vector<int64_t> RepFeedForwardImpl::parameter_versions() const {
  std::vector<int64_t> versions;
  for (const auto& p : parameters()) {
    versions.push_back(p._version());
    versions.push_back(reinterpret_cast<int64_t>(p.data_ptr()));  // replaced storage (.to())
  }
  return versions;
}

at::Tensor RepFeedForwardImpl::forward_inference_form(const at::Tensor& x) {
  auto versions = parameter_versions();
  if (!folded_.in_weight.defined() || versions != folded_versions_) {
    folded_ = fold();
    folded_versions_ = std::move(versions);
  }
  const auto& f = folded_;
  auto a = at::gelu(at::conv2d(x, f.in_weight, f.in_bias));
  a = at::conv2d(a, f.dw_weight, f.dw_bias, /*stride=*/1, /*padding=*/2, /*dilation=*/1, hidden);
  return at::conv2d(a, f.out_weight, f.out_bias);
}

at::Tensor RepFeedForwardImpl::forward(const at::Tensor& x) {
  return probe("mlp", is_training() ? forward_training_form(x) : forward_inference_form(x));
}

}  // namespace ditlab
