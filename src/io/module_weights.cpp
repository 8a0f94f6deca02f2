#include "src/io/module_weights.h"

#include <torch/nn/module.h>

#include <sstream>
#include <vector>

#include "src/common/error.h"
#include "src/common/text.h"
#include "src/io/safetensors.h"
#include "src/io/torch_pickle.h"

namespace ditlab {
namespace {

// A weight may change precision on loading (an F16 or BF16 file into a float32 model), but an
// integer or boolean tensor in a float slot, or the reverse, is another kind of value, not a
// rounding of the same one: copy_ would convert it silently.
bool loadable_as(at::ScalarType stored, at::ScalarType wanted) {
  return stored == wanted || (c10::isFloatingType(stored) && c10::isFloatingType(wanted));
}

// PyTorch's names (c10 calls int8 "Char").
std::string dtype_label(at::ScalarType type) {
  switch (type) {
    case at::kDouble: return "float64";
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(type);
  }
}

}  // namespace

std::map<std::string, at::Tensor> state_dict(const torch::nn::Module& module) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out[p.key()] = p.value();
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out[b.key()] = b.value();
  return out;
}

std::vector<std::string> load_state_dict(torch::nn::Module& module,
                                         const std::map<std::string, at::Tensor>& weights,
                                         const std::string& source, bool allow_missing) {
  auto own = state_dict(module);
  std::vector<std::string> problems, missing;
  for (const auto& [name, tensor] : own) {
    auto it = weights.find(name);
    if (it == weights.end()) {
      missing.push_back(name);
      if (!allow_missing) problems.push_back("missing key '" + name + "'");
    } else if (it->second.sizes() != tensor.sizes()) {
      std::ostringstream msg;
      msg << "key '" << name << "' has shape " << it->second.sizes() << ", the model expects "
          << tensor.sizes();
      problems.push_back(msg.str());
    }
  }
  for (const auto& [name, tensor] : weights) {
    if (own.find(name) == own.end()) problems.push_back("unexpected key '" + name + "'");
  }
  if (!problems.empty()) {
    std::string msg = source + ": weights do not fit the model (" +
                      std::to_string(problems.size()) + " problems):";
    for (size_t i = 0; i < problems.size() && i < 10; ++i) msg += "\n  " + problems[i];
    if (problems.size() > 10) msg += "\n  ...";
    throw ShapeError(msg);
  }
  for (const auto& [name, tensor] : own) {
    auto it = weights.find(name);
    if (it != weights.end() && !loadable_as(it->second.scalar_type(), tensor.scalar_type())) {
      const bool floating = c10::isFloatingType(tensor.scalar_type());
      throw IoError(source + ": key '" + name + "' is stored as " +
                    dtype_label(it->second.scalar_type()) + ", the model expects " +
                    dtype_label(tensor.scalar_type()) +
                    (floating ? " (or another floating dtype)" : ""));
    }
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : own) {
    auto it = weights.find(name);
    if (it != weights.end()) tensor.copy_(it->second);
  }
  return missing;
}

std::map<std::string, std::string> weights_metadata(const std::string& config_yaml, int64_t step) {
  return {{"format", "ditlab"}, {"config", config_yaml}, {"step", std::to_string(step)}};
}

void save_weights(const torch::nn::Module& module, const std::string& path,
                  const std::map<std::string, std::string>& metadata) {
  write_safetensors(path, state_dict(module), metadata);
}

std::map<std::string, std::string> load_weights(torch::nn::Module& module,
                                                const std::string& path) {
  if (is_torch_save_file(path)) {  // an official checkpoint, say: tensors, no metadata
    load_state_dict(module, read_torch_state_dict(path, ""), path);
    return {};
  }
  auto file = read_safetensors(path);
  load_state_dict(module, file.tensors, path);
  return file.metadata;
}

bool is_torch_save_file(const std::string& path) {
  return ends_with(path, ".pt") || ends_with(path, ".pth") || ends_with(path, ".bin");
}

std::map<std::string, at::Tensor> read_weights_file(const std::string& path) {
  if (ends_with(path, ".safetensors")) return read_safetensors(path).tensors;
  if (is_torch_save_file(path)) return read_torch_state_dict(path, "");
  throw IoError("weights file '" + path + "': expected a .safetensors, .pt, .pth or .bin file");
}

}  // namespace ditlab
