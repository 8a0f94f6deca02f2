#include "models/registry.h"

#include <functional>

#include "models/dit/dit.h"
#include "models/skip_dit/skip_dit.h"
#include "src/common/error.h"

namespace ditlab {
namespace {

struct Preset {
  std::string name;
  std::string family;
  int64_t depth, hidden_size, num_heads, patch_size;
};

// The DiT paper's Table 1 (depth, width, heads) crossed with patch sizes 2, 4 and 8, for DiT and
// for Skip-DiT (the same sizes plus the long skips).
const std::vector<Preset>& presets() {
  static const std::vector<Preset> table = [] {
    struct Size {
      const char* name;
      int64_t depth, hidden_size, num_heads;
    };
    const Size sizes[] = {{"S", 12, 384, 6}, {"B", 12, 768, 12}, {"L", 24, 1024, 16}, {"XL", 28, 1152, 16}};
    const std::pair<const char*, const char*> families[] = {{"DiT", "dit"}, {"Skip-DiT", "skip-dit"}};
    std::vector<Preset> out;
    for (const auto& [prefix, family] : families) {
      for (const auto& size : sizes) {
        for (int64_t patch : {2, 4, 8}) {
          out.push_back({std::string(prefix) + "-" + size.name + "/" + std::to_string(patch), family,
                         size.depth, size.hidden_size, size.num_heads, patch});
        }
      }
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
  return o;
}

std::shared_ptr<Backbone> build_dit(const ModelConfig& c) {
  return std::make_shared<DiT>(dit_options(c));
}

std::shared_ptr<Backbone> build_skip_dit(const ModelConfig& c) {
  return std::make_shared<SkipDiT>(dit_options(c));
}

struct Family {
  const char* name;
  std::function<std::shared_ptr<Backbone>(const ModelConfig&)> build;
  bool sampling_cache;  // implements Backbone::begin_sampling with a feature cache
};

const std::vector<Family>& families() {
  static const std::vector<Family> table = {{"dit", build_dit, false},
                                            {"skip-dit", build_skip_dit, true}};
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
  family_for(config.name, &preset);
  ModelConfig c = config;
  if (preset) {
    if (c.depth == 0) c.depth = preset->depth;
    if (c.hidden_size == 0) c.hidden_size = preset->hidden_size;
    if (c.num_heads == 0) c.num_heads = preset->num_heads;
    if (c.patch_size == 0) c.patch_size = preset->patch_size;
  }
  auto require_size = [&](const char* key, int64_t value) {
    if (value < 1) {
      throw ConfigError("model." + std::string(key) + " is not set: model.name '" + c.name +
                        "' is a family, so it needs an explicit value (or use a preset such as "
                        "DiT-S/2)");
    }
  };
  require_size("depth", c.depth);
  require_size("hidden_size", c.hidden_size);
  require_size("num_heads", c.num_heads);
  require_size("patch_size", c.patch_size);
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

bool has_sampling_cache(const std::string& model_name) {
  const Preset* preset = nullptr;
  return family_for(model_name, &preset).sampling_cache;
}

std::shared_ptr<Backbone> build_backbone(const ModelConfig& config) {
  const Preset* preset = nullptr;
  const Family& family = family_for(config.name, &preset);
  return family.build(resolve_model_config(config));
}

}  // namespace ditlab
