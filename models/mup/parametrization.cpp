#include "models/mup/parametrization.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <cmath>
#include <map>
#include <sstream>

#include "models/backbone.h"
#include "models/mup/mup_modules.h"
#include "src/common/error.h"
#include "src/common/text.h"

namespace ditlab {
namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

// PyTorch's fans (torch.nn.init._calculate_fan_in_and_fan_out).
std::pair<double, double> fans(const std::vector<int64_t>& shape) {
  double receptive = 1.0;
  for (size_t i = 2; i < shape.size(); ++i) receptive *= static_cast<double>(shape[i]);
  return {static_cast<double>(shape[1]) * receptive, static_cast<double>(shape[0]) * receptive};
}

// The SP init's standard deviation up to a shape-independent constant.
double sp_std(InitLaw law, const std::vector<int64_t>& shape) {
  if (law == InitLaw::kConstant) return 1.0;
  auto [fan_in, fan_out] = fans(shape);
  if (law == InitLaw::kFanIn) return 1.0 / std::sqrt(fan_in);
  if (law == InitLaw::kXavierFlat) fan_out = static_cast<double>(shape[0]);
  return std::sqrt(2.0 / (fan_in + fan_out));
}

// Whether the dimensions that grew from the base model fit the declared role.
void check_growth(const ParamWidth& p) {
  std::vector<size_t> grown;
  for (size_t i = 0; i < p.shape.size(); ++i) {
    if (p.shape[i] != p.base_shape[i]) grown.push_back(i);
  }
  if (grown.empty()) return;  // the same width: nothing to check
  bool fits = false;
  switch (p.role) {
    case WidthRole::kHidden: fits = grown.size() >= 2; break;
    case WidthRole::kInput: fits = grown.size() == 1; break;
    case WidthRole::kVector: fits = grown.size() == 1; break;
    case WidthRole::kOutput: fits = grown.size() == 1 && grown[0] == 1; break;
  }
  if (!fits) {
    throw ConfigError("µP: parameter " + p.name + " is declared " + to_string(p.role) +
                      " but grows from " + shape_text(p.base_shape) + " at the base width to " +
                      shape_text(p.shape) + " (hidden: fan-in and fan-out grow; input, vector: one "
                      "dimension; output: the fan-in only)");
  }
}

std::map<std::string, std::shared_ptr<torch::nn::Module>> modules_by_name(const torch::nn::Module& m) {
  std::map<std::string, std::shared_ptr<torch::nn::Module>> out;
  for (const auto& item : m.named_modules()) out[item.key()] = item.value();
  return out;
}

}  // namespace

std::vector<ParamWidth> width_table(const Backbone& model, const Backbone& base) {
  WidthRoles roles;
  model.declare_width_roles(roles);
  std::map<std::string, WidthDeclaration> unmatched = roles.declared();
  std::map<std::string, std::vector<int64_t>> shapes, base_shapes;
  for (const auto& item : model.named_parameters()) shapes[item.key()] = item.value().sizes().vec();
  for (const auto& item : base.named_parameters()) base_shapes[item.key()] = item.value().sizes().vec();

  std::vector<ParamWidth> table;
  for (const auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    auto declared = unmatched.find(name);
    if (!item.value().requires_grad()) {  // fixed tables (DiT's sin-cos pos_embed) do not train
      if (declared != unmatched.end()) unmatched.erase(declared);
      continue;
    }
    if (declared == unmatched.end()) {
      throw ConfigError("µP: parameter " + name + " has no declared width role (its layer's "
                        "declare_width_roles must name it)");
    }
    ParamWidth p{name, declared->second.role, declared->second.init, item.value().sizes().vec(), {}};
    p.output_rows = declared->second.output_rows;
    unmatched.erase(declared);
    auto base_shape = base_shapes.find(name);
    if (base_shape == base_shapes.end() || base_shape->second.size() != p.shape.size()) {
      throw ConfigError("µP: parameter " + name + " " + shape_text(p.shape) +
                        " has no counterpart of the same rank in the base-width model");
    }
    p.base_shape = base_shape->second;
    check_growth(p);
    // The shapes the init law reads: the tensor's own, or for a bias its layer's weight.
    std::vector<int64_t> law_shape = p.shape, law_base_shape = p.base_shape;
    if (p.init != InitLaw::kConstant && p.shape.size() < 2) {
      const std::string weight = ends_with(name, ".bias") ? name.substr(0, name.size() - 5) + ".weight" : "";
      if (weight.empty() || shapes.count(weight) == 0 || base_shapes.count(weight) == 0) {
        throw ConfigError("µP: parameter " + name + " has rank " + std::to_string(p.shape.size()) +
                          " and a fan-based init law, but no layer weight to take the fans from");
      }
      law_shape = shapes.at(weight);
      law_base_shape = base_shapes.at(weight);
    }
    if (p.role == WidthRole::kHidden || p.role == WidthRole::kOutput) {
      p.fan_in_mult = fans(p.shape).first / fans(p.base_shape).first;
    }
    if (p.shape != p.base_shape || law_shape != law_base_shape) {
      double target = sp_std(p.init, law_base_shape);
      if (p.role == WidthRole::kHidden) target /= std::sqrt(p.fan_in_mult);
      p.init_scale = target / sp_std(p.init, law_shape);
      if (std::abs(p.init_scale - 1.0) < 1e-12) p.init_scale = 1.0;
      if (p.output_rows > 0) p.output_rows_scale = 1.0 / std::sqrt(p.fan_in_mult);
    }
    table.push_back(std::move(p));
  }
  if (!unmatched.empty()) {
    throw ConfigError("µP: a width role is declared for " + unmatched.begin()->first +
                      ", which the model does not have");
  }
  return table;
}

void apply_mup(Backbone& model, const Backbone& base, const MupConfig& config) {
  const std::vector<ParamWidth> table = width_table(model, base);
  const auto modules = modules_by_name(model);
  std::map<std::string, at::Tensor> parameters;
  for (const auto& item : model.named_parameters()) parameters[item.key()] = item.value();

  torch::NoGradGuard no_grad;
  std::map<std::string, OptimizerScaling> scaling;
  for (const ParamWidth& p : table) {
    if (p.init_scale != 1.0) parameters.at(p.name).mul_(p.init_scale);
    if (p.output_rows_scale != 1.0) {
      at::Tensor w = parameters.at(p.name);
      w.narrow(0, w.size(0) - p.output_rows, p.output_rows).mul_(p.output_rows_scale);
    }
    if (p.role == WidthRole::kHidden) scaling[p.name] = {1.0 / p.fan_in_mult, p.fan_in_mult};
    if (p.role != WidthRole::kOutput) continue;
    // The readout multiplier belongs to the nearest enclosing module that applies one.
    MupReadout* readout = nullptr;
    for (std::string owner = p.name; readout == nullptr && owner.find('.') != std::string::npos;) {
      owner = owner.substr(0, owner.rfind('.'));
      auto it = modules.find(owner);
      if (it != modules.end()) readout = dynamic_cast<MupReadout*>(it->second.get());
    }
    if (readout == nullptr) {
      throw ConfigError("µP: output parameter " + p.name + " is not in a layer that applies the "
                        "readout multiplier");
    }
    readout->readout_multiplier =
        (readout->takes_output_mult ? config.output_mult : 1.0) / p.fan_in_mult;
  }
  model.set_optimizer_scaling(std::move(scaling));

  const auto base_modules = modules_by_name(base);
  for (const auto& [name, module] : modules) {
    auto* attention = dynamic_cast<MupAttention*>(module.get());
    if (attention == nullptr) continue;
    auto it = base_modules.find(name);
    auto* base_attention = it == base_modules.end() ? nullptr : dynamic_cast<MupAttention*>(it->second.get());
    DITLAB_ASSERT(base_attention != nullptr, "µP: attention " + name + " is missing in the base model");
    const double head_dim = static_cast<double>(attention->head_dim());
    const double base_head_dim = static_cast<double>(base_attention->head_dim());
    if (config.attn_mult > 0) {
      attention->logit_multiplier = config.attn_mult / std::sqrt(head_dim);
    } else if (head_dim != base_head_dim) {
      attention->logit_multiplier = std::sqrt(base_head_dim / head_dim);  // sqrt(base) / head_dim
    }
  }
}

ModelConfig mup_base_config(const ModelConfig& config) {
  if (config.mup.base_width < 1) {
    throw ConfigError("model.mup.enabled needs model.mup.base_width: the hidden_size at which the "
                      "hyper-parameters were tuned (e.g. the model's own hidden_size " +
                      std::to_string(config.hidden_size) + " to start a study)");
  }
  ModelConfig base = config;
  base.hidden_size = config.mup.base_width;
  if (config.mup.base_num_heads > 0) base.num_heads = config.mup.base_num_heads;
  base.mup = MupConfig{};
  return base;
}

bool forward_is_standard(const ModelConfig& c) {
  const MupConfig& m = c.mup;
  if (!m.enabled) return true;
  const bool same_heads = m.base_num_heads == 0 || m.base_num_heads == c.num_heads;
  // attn_mult 0 means sqrt(base head_dim): at the base shape, SP's 1 / sqrt(head_dim).
  const bool standard_logits =
      m.attn_mult == 0.0 ||
      (c.num_heads > 0 && m.attn_mult == std::sqrt(static_cast<double>(c.hidden_size / c.num_heads)));
  return c.hidden_size == m.base_width && same_heads && m.output_mult == 1.0 && standard_logits;
}

namespace {
std::string describe_parametrization(const ModelConfig& c) {
  if (forward_is_standard(c)) return c.mup.enabled ? "µP at its base width (standard forward)" : "the standard parametrization";
  std::ostringstream out;
  out << "µP with base_width " << c.mup.base_width << ", base_num_heads " << c.mup.base_num_heads
      << ", output_mult " << c.mup.output_mult << ", attn_mult " << c.mup.attn_mult << " at hidden_size "
      << c.hidden_size;
  return out.str();
}
}  // namespace

void check_same_forward_multipliers(const ModelConfig& target, const ModelConfig& source,
                                    const std::string& source_name) {
  const bool target_standard = forward_is_standard(target), source_standard = forward_is_standard(source);
  const MupConfig &a = target.mup, &b = source.mup;
  const bool same = target_standard == source_standard &&
                    (target_standard || (a.base_width == b.base_width && a.base_num_heads == b.base_num_heads &&
                                         a.output_mult == b.output_mult && a.attn_mult == b.attn_mult));
  if (same) return;
  throw ConfigError(source_name + " was trained under " + describe_parametrization(source) +
                    ", but this model is " + describe_parametrization(target) +
                    ": µP's readout and attention multipliers are in the config, not in the tensors, so "
                    "these weights would compute another function here. Use the model.mup settings "
                    "the weights were trained with");
}

}  // namespace ditlab
