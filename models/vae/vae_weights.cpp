#include "models/vae/vae_weights.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <vector>

#include "src/common/error.h"
#include "src/common/text.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"

namespace ditlab {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw IoError("cannot read " + path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

AutoencoderSpec parse_autoencoder_config(const std::string& json, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(json);  // JSON is YAML
  } catch (const YAML::Exception& e) {
    throw ConfigError(source + ": not a JSON object (" + e.msg + ")");
  }
  if (!root.IsMap()) throw ConfigError(source + ": expected a JSON object (diffusers config.json)");
  // Every key diffusers' AutoencoderKL saves. Those this model does not implement are accepted
  // only at the values that leave it unchanged (below); anything else is refused, so that no key
  // of a newer or another autoencoder is silently ignored. Keys starting with '_' are diffusers'
  // bookkeeping (_class_name, _diffusers_version, _name_or_path).
  static const std::set<std::string> known = {
      "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
      "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
      "shift_factor", "latents_mean", "latents_std", "force_upcast", "use_quant_conv",
      "use_post_quant_conv", "mid_block_add_attention"};
  for (const auto& entry : root) {
    std::string key;
    try {
      key = entry.first.as<std::string>();
    } catch (const YAML::Exception&) {
      throw ConfigError(source + ": a key that is not a string");
    }
    if (key.empty() || key[0] == '_' || known.count(key)) continue;
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    throw ConfigError(source + ": unknown AutoencoderKL key \"" + key + "\" (known: " + list + ")");
  }
  // Null, or a value that changes nothing: what this model computes.
  auto require_neutral = [&](const char* key, const std::function<bool(const YAML::Node&)>& neutral,
                             const std::string& why) {
    const YAML::Node node = root[key];
    if (!node || node.IsNull()) return;
    bool ok = false;
    try {
      ok = neutral(node);
    } catch (const YAML::Exception&) {
      ok = false;
    }
    if (!ok) throw ConfigError(source + ": \"" + key + "\" " + why);
  };
  require_neutral("shift_factor", [](const YAML::Node& n) { return n.as<double>() == 0.0; },
                  "is not supported (latents = scaling_factor * z only; SD3 / FLUX autoencoders shift them)");
  require_neutral("latents_mean", [](const YAML::Node&) { return false; },
                  "is not supported (per-channel latent normalisation, as SDXL's refiner configs give it)");
  require_neutral("latents_std", [](const YAML::Node&) { return false; },
                  "is not supported (per-channel latent normalisation, as SDXL's refiner configs give it)");
  require_neutral("use_quant_conv", [](const YAML::Node& n) { return n.as<bool>(); },
                  "false is not supported (this AutoencoderKL has quant_conv)");
  require_neutral("use_post_quant_conv", [](const YAML::Node& n) { return n.as<bool>(); },
                  "false is not supported (this AutoencoderKL has post_quant_conv)");
  AutoencoderSpec spec;
  auto& o = spec.options;
  auto get_int = [&](const char* key, int64_t& field) {
    if (!root[key]) return;
    try {
      field = root[key].as<int64_t>();
    } catch (const YAML::Exception&) {
      throw ConfigError(source + ": \"" + key + "\" must be an integer");
    }
  };
  get_int("in_channels", o.in_channels);
  get_int("out_channels", o.out_channels);
  get_int("layers_per_block", o.layers_per_block);
  get_int("latent_channels", o.latent_channels);
  get_int("norm_num_groups", o.norm_num_groups);
  if (root["block_out_channels"]) {
    try {
      o.block_out_channels = root["block_out_channels"].as<std::vector<int64_t>>();
    } catch (const YAML::Exception&) {
      throw ConfigError(source + ": \"block_out_channels\" must be a list of integers");
    }
  }
  if (root["scaling_factor"]) {
    try {
      spec.scaling_factor = root["scaling_factor"].as<double>();
    } catch (const YAML::Exception&) {
      throw ConfigError(source + ": \"scaling_factor\" must be a number");
    }
  }
  // Bounds far above any real AutoencoderKL (Stable Diffusion's: 4 levels, at most 512 channels),
  // so that a corrupt config is refused here, not by an allocation of terabytes.
  constexpr int64_t kMaxChannels = 65536, kMaxBlocks = 16;
  auto check_range = [&](const std::string& key, int64_t value, int64_t max) {
    if (value < 1 || value > max) {
      throw ConfigError(source + ": \"" + key + "\" is " + std::to_string(value) +
                        ", expected 1 to " + std::to_string(max));
    }
  };
  check_range("in_channels", o.in_channels, kMaxChannels);
  check_range("out_channels", o.out_channels, kMaxChannels);
  check_range("latent_channels", o.latent_channels, kMaxChannels);
  check_range("norm_num_groups", o.norm_num_groups, kMaxChannels);
  check_range("layers_per_block", o.layers_per_block, kMaxBlocks);
  const auto levels = static_cast<int64_t>(o.block_out_channels.size());
  if (levels < 1 || levels > kMaxBlocks) {
    throw ConfigError(source + ": \"block_out_channels\" lists " + std::to_string(levels) +
                      " blocks, expected 1 to " + std::to_string(kMaxBlocks));
  }
  for (int64_t c : o.block_out_channels) check_range("block_out_channels", c, kMaxChannels);
  // yaml-cpp's own conversion errors name neither the file nor the key.
  auto as_string = [&](const YAML::Node& node, const std::string& key) {
    try {
      return node.as<std::string>();
    } catch (const YAML::Exception&) {
      throw ConfigError(source + ": \"" + key + "\" must be a string");
    }
  };
  auto check_blocks = [&](const char* key, const char* expected) {
    if (!root[key]) return;
    if (!root[key].IsSequence()) {
      throw ConfigError(source + ": \"" + key + "\" must be a list of block names");
    }
    for (const auto& block : root[key]) {
      const std::string type = as_string(block, key);
      if (type != expected) {
        throw ConfigError(source + ": \"" + key + "\" has " + type + "; this AutoencoderKL has " +
                          expected + " only");
      }
    }
    if (root[key].size() != o.block_out_channels.size()) {
      throw ConfigError(source + ": \"" + key + "\" and \"block_out_channels\" differ in length");
    }
  };
  check_blocks("down_block_types", "DownEncoderBlock2D");
  check_blocks("up_block_types", "UpDecoderBlock2D");
  if (root["act_fn"]) {
    const std::string act_fn = as_string(root["act_fn"], "act_fn");
    // diffusers' get_activation takes "swish" as another name of silu.
    if (act_fn != "silu" && act_fn != "swish") {
      throw ConfigError(source + ": \"act_fn\" " + act_fn + " (only silu, alias swish)");
    }
  }
  if (root["mid_block_add_attention"]) {
    bool add_attention = true;
    try {
      add_attention = root["mid_block_add_attention"].as<bool>();
    } catch (const YAML::Exception&) {
      throw ConfigError(source + ": \"mid_block_add_attention\" must be true or false");
    }
    if (!add_attention) {
      throw ConfigError(source + ": \"mid_block_add_attention\": false is not supported");
    }
  }
  if (!(spec.scaling_factor > 0)) throw ConfigError(source + ": \"scaling_factor\" must be > 0");
  return spec;
}

std::string autoencoder_config_json(const AutoencoderSpec& spec) {
  const auto& o = spec.options;
  std::ostringstream out;
  auto list = [&](const std::string& item) {
    std::string s = "[";
    for (size_t i = 0; i < o.block_out_channels.size(); ++i) s += (i ? ", " : "") + item;
    return s + "]";
  };
  out << "{\"_class_name\": \"AutoencoderKL\", \"in_channels\": " << o.in_channels
      << ", \"out_channels\": " << o.out_channels << ", \"block_out_channels\": [";
  for (size_t i = 0; i < o.block_out_channels.size(); ++i) out << (i ? ", " : "") << o.block_out_channels[i];
  out << "], \"down_block_types\": " << list("\"DownEncoderBlock2D\"")
      << ", \"up_block_types\": " << list("\"UpDecoderBlock2D\"")
      << ", \"layers_per_block\": " << o.layers_per_block << ", \"latent_channels\": " << o.latent_channels
      << ", \"norm_num_groups\": " << o.norm_num_groups << ", \"act_fn\": \"silu\", \"scaling_factor\": "
      << spec.scaling_factor << "}";
  return out.str();
}

AutoencoderSpec read_autoencoder_spec(const std::string& weights_path, const std::string& config_path) {
  if (!config_path.empty()) return parse_autoencoder_config(read_text(config_path), config_path);
  if (!std::filesystem::exists(weights_path)) {
    throw IoError("autoencoder weights " + weights_path + " do not exist");
  }
  const auto metadata = map_safetensors(weights_path).metadata;  // maps the file: reads the header only
  auto it = metadata.find("autoencoder_config");
  if (it != metadata.end()) return parse_autoencoder_config(it->second, weights_path + " (metadata)");
  const auto beside = std::filesystem::path(weights_path).parent_path() / "config.json";
  if (std::filesystem::exists(beside)) return parse_autoencoder_config(read_text(beside.string()), beside.string());
  throw ConfigError("autoencoder weights " + weights_path + ": no architecture found (no "
                    "\"autoencoder_config\" metadata and no config.json beside it); set "
                    "autoencoder.config to diffusers' config.json");
}

std::map<std::string, at::Tensor> current_vae_keys(std::map<std::string, at::Tensor> tensors) {
  static const std::pair<std::string, std::string> renames[] = {
      {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
  std::map<std::string, at::Tensor> out;
  std::map<std::string, std::string> renamed_from;  // current key -> the file's name for it
  for (auto& [name, tensor] : tensors) {
    std::string key = name;
    const bool attention = key.find(".attentions.") != std::string::npos;
    if (attention) {
      for (const auto& [old_name, new_name] : renames) {
        const auto at = key.find(old_name);
        if (at != std::string::npos) key.replace(at, old_name.size(), new_name);
      }
    }
    // The attention's projections are Linears; the original checkpoints stored 1x1 convs.
    if (attention && tensor.dim() == 4 && tensor.size(2) == 1 && tensor.size(3) == 1) {
      tensor = tensor.flatten(1);
    }
    // A file with both names of one weight (e.g. query and to_q) is ambiguous: neither may win
    // silently.
    const auto [first, inserted] = renamed_from.emplace(key, name);
    if (!inserted) {
      throw IoError("tensors '" + first->second + "' and '" + name + "' are both the weight '" + key +
                    "' (diffusers' old and current attention names); keep one of them");
    }
    out[key] = tensor;
  }
  return out;
}

AutoencoderKL load_autoencoder(const std::string& weights_path, const std::string& config_path,
                               AutoencoderSpec* spec_out) {
  const AutoencoderSpec spec = read_autoencoder_spec(weights_path, config_path);
  AutoencoderKL model(spec.options);
  std::map<std::string, at::Tensor> tensors = map_safetensors(weights_path).tensors;
  std::vector<std::string> renamed;  // the file's old attention names
  try {
    const auto current = current_vae_keys(tensors);
    for (const auto& item : tensors) {
      if (current.count(item.first) == 0) renamed.push_back(item.first);
    }
    tensors = current;
  } catch (const IoError& e) {  // a name clash, which current_vae_keys cannot name the file of
    throw IoError(weights_path + ": " + e.what());
  }
  // The keys a mismatch names are diffusers' current ones; say which the file holds under its
  // old names.
  auto with_renames = [&](const std::string& what) {
    return what + " (the file's " + std::to_string(renamed.size()) + " old attention names, such as '" +
           renamed.front() + "', were read as the current ones: query -> to_q, key -> to_k, value -> "
           "to_v, proj_attn -> to_out.0)";
  };
  try {
    load_state_dict(*model, tensors, weights_path);
  } catch (const ShapeError& e) {
    if (renamed.empty()) throw;
    throw ShapeError(with_renames(e.what()));
  } catch (const IoError& e) {
    if (renamed.empty()) throw;
    throw IoError(with_renames(e.what()));
  }
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  if (spec_out) *spec_out = spec;
  return model;
}

void save_autoencoder(const AutoencoderKL& model, const AutoencoderSpec& spec, const std::string& path,
                      std::map<std::string, std::string> metadata) {
  metadata["format"] = "pt";  // what diffusers writes
  metadata["autoencoder_config"] = autoencoder_config_json(spec);
  write_safetensors(path, state_dict(*model), metadata);
}

}  // namespace ditlab
