#include "models/registry.h"

#include <ATen/CPUGeneratorImpl.h>

#include <functional>

#include "models/dim/dim.h"
#include "models/dit/dit.h"
#include "models/mup/parametrization.h"
#include "models/skip_dit/skip_dit.h"
#include "models/udit/udit.h"
#include "src/common/error.h"

namespace ditlab {
namespace {

struct Preset {
  std::string name;
  std::string family;
  int64_t depth, hidden_size, num_heads, patch_size;
  std::vector<int64_t> level_depths;  // u-dit
  int64_t num_experts = 0, experts_per_token = 0;  // dit-moe
};

const std::vector<Preset>& presets() {
  static const std::vector<Preset> table = [] {
    std::vector<Preset> out;
    // The DiT paper's Table 1 (depth, width, heads) crossed with patch sizes 2, 4 and 8, for
    // DiT and for Skip-DiT (the same sizes plus the long skips).
    struct Size {
      const char* name;
      int64_t depth, hidden_size, num_heads;
    };
    const Size sizes[] = {{"S", 12, 384, 6}, {"B", 12, 768, 12}, {"L", 24, 1024, 16}, {"XL", 28, 1152, 16}};
    const std::pair<const char*, const char*> dit_families[] = {{"DiT", "dit"}, {"Skip-DiT", "skip-dit"}};
    for (const auto& [prefix, family] : dit_families) {
      for (const auto& size : sizes) {
        for (int64_t patch : {2, 4, 8}) {
          out.push_back({std::string(prefix) + "-" + size.name + "/" + std::to_string(patch), family,
                         size.depth, size.hidden_size, size.num_heads, patch, {}});
        }
      }
    }
    // The DiT-MoE paper's Table 1 (DiT sizes at patch 2, E experts, 2 active).
    for (const auto& [size, experts] : {std::pair<Size, int64_t>{sizes[0], 8}, {sizes[0], 16},
                                        {sizes[1], 8}, {sizes[2], 8}, {sizes[3], 8}}) {
      out.push_back({std::string("DiT-MoE-") + size.name + "/2-" + std::to_string(experts) + "E2A",
                     "dit-moe", size.depth, size.hidden_size, size.num_heads, 2, {}, experts, 2});
    }
    // The U-DiT paper's sizes (widths C, 2C, 4C per level; the same heads at every level).
    for (const auto& [name, width, heads] : {std::tuple<const char*, int64_t, int64_t>{"U-DiT-S", 96, 4},
                                             {"U-DiT-B", 192, 8}, {"U-DiT-L", 384, 16}}) {
      out.push_back({name, "u-dit", 0, width, heads, 0, {2, 5, 8, 5, 2}});
    }
    // DiM: the paper's L/2 and H/2 (49 Mamba layers), and two small ones for experiments here
    // (ours: DiT-S and DiT-B widths, 25 layers, odd so that block 0 + two halves of U-skips).
    for (const auto& [name, depth, width] : {std::tuple<const char*, int64_t, int64_t>{"DiM-S/2", 25, 384},
                                             {"DiM-B/2", 25, 768}, {"DiM-L/2", 49, 1024},
                                             {"DiM-H/2", 49, 1536}}) {
      out.push_back({name, "dim", depth, width, 0, 2, {}});
    }
    return out;
  }();
  return table;
}

DiTOptions dit_options(const ModelConfig& c) {
  DiTOptions o;
  o.input_size = c.input_size;
  o.patch_size = c.patch_size;
  o.in_channels = c.in_channels;
  o.hidden_size = c.hidden_size;
  o.depth = c.depth;
  o.num_heads = c.num_heads;
  o.mlp_ratio = c.mlp_ratio;
  o.num_classes = c.num_classes;
  o.learn_sigma = c.learn_sigma;
  o.with_null_class = c.class_dropout_prob > 0.0;
  o.conditioning = parse_conditioning(c.conditioning);
  o.moe.num_experts = c.moe.num_experts;
  o.moe.experts_per_token = c.moe.experts_per_token;
  o.moe.capacity_factor = c.moe.capacity_factor;
  o.moe.aux_loss_weight = c.moe.aux_loss_weight;
  o.checkpoint_blocks = c.checkpoint_blocks;
  return o;
}

std::shared_ptr<Backbone> build_dit(const ModelConfig& c) {
  return std::make_shared<DiT>(dit_options(c));
}

std::shared_ptr<Backbone> build_skip_dit(const ModelConfig& c) {
  return std::make_shared<SkipDiT>(dit_options(c));
}

ModelCost dit_cost(const ModelConfig& c) {
  const DiTOptions o = dit_options(c);
  // A model the constructor refuses is not priced either (input 30 at patch 4 would count a
  // 7x7 grid, input 2 at patch 4 zero tokens).
  check_dit_options(o);
  return {dit_parameter_count(o), dit_parameter_count(o, true), dit_forward_macs(o), dit_tokens(o)};
}

// The same formulas as SkipDiT's own (models/skip_dit/skip_dit.h), so the two cannot disagree.
ModelCost skip_dit_cost(const ModelConfig& c) {
  const DiTOptions o = dit_options(c);
  check_skip_dit_options(o);
  return {skip_dit_parameter_count(o), skip_dit_parameter_count(o, true), skip_dit_forward_macs(o),
          dit_tokens(o)};
}

UDiTOptions udit_options(const ModelConfig& c) {
  UDiTOptions o;
  o.input_size = c.input_size;
  o.in_channels = c.in_channels;
  o.hidden_size = c.hidden_size;
  o.num_heads = c.num_heads;
  o.level_depths = c.level_depths;
  o.mlp_ratio = c.mlp_ratio;
  o.num_classes = c.num_classes;
  o.learn_sigma = c.learn_sigma;
  o.with_null_class = c.class_dropout_prob > 0.0;
  o.checkpoint_blocks = c.checkpoint_blocks;
  return o;
}

ModelCost udit_cost(const ModelConfig& c) {
  const UDiTOptions o = udit_options(c);
  const int64_t params = udit_parameter_count(o, /*inference_form=*/true);
  return {params, params, udit_forward_macs(o), c.input_size * c.input_size,
          udit_forward_macs(o, /*training_form=*/true)};
}

DiMOptions dim_options(const ModelConfig& c) {
  DiMOptions o;
  o.input_size = c.input_size;
  o.patch_size = c.patch_size;
  o.in_channels = c.in_channels;
  o.hidden_size = c.hidden_size;
  o.depth = c.depth;
  o.num_classes = c.num_classes;
  o.learn_sigma = c.learn_sigma;
  o.with_null_class = c.class_dropout_prob > 0.0;
  o.checkpoint_blocks = c.checkpoint_blocks;
  // Under µP the skip layout follows the base width (whose model supplies the base shapes).
  if (c.mup.enabled) o.skip_layout_width = c.mup.base_width;
  return o;
}

std::shared_ptr<Backbone> build_dim(const ModelConfig& c) {
  if (c.conditioning != "adaln_zero") {
    throw ConfigError("model.conditioning '" + c.conditioning + "': dim is built with its own "
                      "adaLN-single conditioning only (leave the default)");
  }
  return std::make_shared<DiM>(dim_options(c));
}

ModelCost dim_cost(const ModelConfig& c) {
  const DiMOptions o = dim_options(c);
  const int64_t params = dim_parameter_count(o);
  const int64_t side = o.input_size / o.patch_size + o.d_conv;
  return {params, params, dim_forward_macs(o), 2 + o.d_conv + side * side};
}

std::shared_ptr<Backbone> build_udit(const ModelConfig& c) {
  if (c.conditioning != "adaln_zero") {
    throw ConfigError("model.conditioning '" + c.conditioning + "': u-dit is built with adaln_zero only");
  }
  return std::make_shared<UDiT>(udit_options(c));
}

// A token-sequence transformer with depth and patch size (DiT and its descendants), or a
// U-shaped one with blocks per level and no patchify (U-DiT).
enum class Shape { kTokens, kLevels };

struct Family {
  const char* name;
  std::function<std::shared_ptr<Backbone>(const ModelConfig&)> build;
  std::function<ModelCost(const ModelConfig&)> cost;
  Shape shape;
  double default_mlp_ratio;
  bool sampling_cache;  // implements Backbone::begin_sampling with a feature cache
  bool attention = true;  // has attention heads (model.num_heads)
  bool checkpoint_blocks = false;  // supports model.checkpoint_blocks
  bool cuda_graph = false;  // its training step can be recorded as a CUDA graph (fixed shapes, no host reads)
};

const std::vector<Family>& families() {
  static const std::vector<Family> table = {
      {"dit", build_dit, dit_cost, Shape::kTokens, 4.0, false, true, true, true},
      {"skip-dit", build_skip_dit, skip_dit_cost, Shape::kTokens, 4.0, true, true, true, true},
      // The routers' load-balancing loss is read after forward from each block: a recomputed
      // block's forward records no graph for it. Its routing reads the experts' token counts
      // back to the host and sizes tensors by them, which a CUDA graph cannot record.
      {"dit-moe", build_dit, dit_cost, Shape::kTokens, 4.0, false, true, false, false},
      {"u-dit", build_udit, udit_cost, Shape::kLevels, 2.0, false, true, true, true},
      {"dim", build_dim, dim_cost, Shape::kTokens, 0.0, false, /*attention=*/false, true, true}};
  return table;
}

const Family& family_for(const std::string& model_name, const Preset** preset) {
  *preset = nullptr;
  std::string family = model_name;
  for (const auto& p : presets()) {
    if (model_name == p.name) {
      *preset = &p;
      family = p.family;
    }
  }
  for (const auto& f : families()) {
    if (family == f.name) return f;
  }
  std::string msg = "model.name '" + model_name + "' is unknown; valid names:";
  for (const auto& name : model_names()) msg += " " + name;
  throw ConfigError(msg);
}

}  // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& f : families()) names.push_back(f.name);
  for (const auto& p : presets()) names.push_back(p.name);
  return names;
}

ModelConfig resolve_model_config(const ModelConfig& config) {
  const Preset* preset = nullptr;
  const Family& family = family_for(config.name, &preset);
  ModelConfig c = config;
  if (preset) {
    if (c.depth == 0) c.depth = preset->depth;
    if (c.hidden_size == 0) c.hidden_size = preset->hidden_size;
    if (c.num_heads == 0) c.num_heads = preset->num_heads;
    if (c.patch_size == 0) c.patch_size = preset->patch_size;
    if (c.level_depths.empty()) c.level_depths = preset->level_depths;
    if (c.moe.num_experts == 0) c.moe.num_experts = preset->num_experts;
    if (c.moe.experts_per_token == 0) c.moe.experts_per_token = preset->experts_per_token;
  }
  const bool moe_family = std::string(family.name) == "dit-moe";
  if (moe_family) {
    if (c.moe.experts_per_token == 0) c.moe.experts_per_token = 2;
    if (c.moe.num_experts < 1) {
      throw ConfigError("model.moe.num_experts is not set: model.name '" + c.name +
                        "' needs routed experts (or use a preset such as DiT-MoE-S/2-8E2A)");
    }
  } else if (c.moe.num_experts != 0 || c.moe.experts_per_token != 0) {
    throw ConfigError("model.moe.* does not apply to model.name '" + c.name + "' (" + family.name +
                      "); use a dit-moe model for experts");
  }
  if (c.mlp_ratio == 0.0) c.mlp_ratio = family.default_mlp_ratio;
  const std::string example = family.shape == Shape::kTokens ? "DiT-S/2" : "U-DiT-S";
  auto require_size = [&](const char* key, int64_t value) {
    if (value < 1) {
      throw ConfigError("model." + std::string(key) + " is not set: model.name '" + c.name +
                        "' is a family, so it needs an explicit value (or use a preset such as " +
                        example + ")");
    }
  };
  auto reject = [&](const char* key, bool set, const char* instead) {
    if (set) {
      throw ConfigError("model." + std::string(key) + " does not apply to model.name '" + c.name +
                        "' (" + family.name + "); " + instead);
    }
  };
  require_size("hidden_size", c.hidden_size);
  if (family.attention) {
    require_size("num_heads", c.num_heads);
  } else {
    reject("num_heads", c.num_heads != 0, "it has no attention (Mamba mixers)");
    reject("mlp_ratio", config.mlp_ratio != 0.0, "its blocks have no MLP (one Mamba mixer each)");
  }
  if (c.mup.enabled) {
    mup_base_config(c);  // checks mup.base_width
    reject("mup.base_num_heads", !family.attention && c.mup.base_num_heads != 0,
           "it has no attention heads");
    reject("mup.attn_mult", !family.attention && c.mup.attn_mult != 0.0, "it has no attention");
    // U-DiT's attention is cosine attention (unit q and k, a learned logit scale): its logits do
    // not grow with head_dim, so the 1/head_dim rule has nothing to correct.
    reject("mup.attn_mult", family.name == std::string("u-dit") && c.mup.attn_mult != 0.0,
           "its attention is cosine attention, whose logits do not grow with head_dim");
  }
  reject("checkpoint_blocks", c.checkpoint_blocks && !family.checkpoint_blocks,
         "the routers' load-balancing loss needs the blocks' recorded forward");
  if (family.shape == Shape::kTokens) {
    require_size("depth", c.depth);
    require_size("patch_size", c.patch_size);
    reject("level_depths", !c.level_depths.empty(), "its blocks are model.depth");
  } else {
    reject("depth", c.depth != 0, "set model.level_depths (blocks per level) instead");
    reject("patch_size", c.patch_size != 0, "it has no patchify (a 3x3 conv embeds every pixel)");
    if (c.level_depths.size() != 5) {
      throw ConfigError("model.level_depths must list 5 block counts [enc1, enc2, latent, dec2, "
                        "dec1] for model.name '" + c.name + "' (got " +
                        std::to_string(c.level_depths.size()) + ")");
    }
  }
  auto require_data = [&](const char* key, int64_t value) {
    if (value < 1) {
      throw ConfigError("model." + std::string(key) + " is not set; it normally comes from the "
                        "data, so give it explicitly when there is no dataset (e.g. for weights "
                        "without an embedded config)");
    }
  };
  require_data("input_size", c.input_size);
  require_data("in_channels", c.in_channels);
  require_data("num_classes", c.num_classes);
  return c;
}

ModelCost model_cost(const ModelConfig& config) {
  const Preset* preset = nullptr;
  ModelCost cost = family_for(config.name, &preset).cost(resolve_model_config(config));
  if (cost.training_forward_macs == 0) cost.training_forward_macs = cost.forward_macs;  // one form
  return cost;
}

bool has_sampling_cache(const std::string& model_name) {
  const Preset* preset = nullptr;
  return family_for(model_name, &preset).sampling_cache;
}

bool recordable_as_cuda_graph(const std::string& model_name) {
  const Preset* preset = nullptr;
  return family_for(model_name, &preset).cuda_graph;
}

std::shared_ptr<Backbone> build_backbone(const ModelConfig& config) {
  const Preset* preset = nullptr;
  const Family& family = family_for(config.name, &preset);
  const ModelConfig resolved = resolve_model_config(config);
  std::shared_ptr<Backbone> model = family.build(resolved);
  if (!resolved.mup.enabled) return model;
  // µP: the same architecture at the base width supplies the base shapes. It is built only when
  // the widths differ, and without consuming the global generator, so that a µP model at its
  // base width is the standard model bit for bit and other widths draw the same stream after.
  const ModelConfig base_config = mup_base_config(resolved);
  std::shared_ptr<Backbone> base = model;
  if (base_config.hidden_size != resolved.hidden_size || base_config.num_heads != resolved.num_heads) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    const at::Tensor state = generator.get_state();
    try {
      base = family.build(base_config);
    } catch (const Error& e) {
      generator.set_state(state);
      throw ConfigError("model.mup.base_width " + std::to_string(base_config.hidden_size) +
                        " (heads " + std::to_string(base_config.num_heads) +
                        "): the base-width model cannot be built: " + e.what());
    }
    generator.set_state(state);
  }
  apply_mup(*model, *base, resolved.mup);
  return model;
}

}  // namespace ditlab
