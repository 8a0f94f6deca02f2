// A module's state dict (registered parameters and buffers, by their dotted names) to and from
// safetensors. Names are the official state-dict keys, so no remapping happens here.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace ditlab {

std::map<std::string, at::Tensor> state_dict(const torch::nn::Module& module);

// Copies `weights` into the module strictly: a missing, unexpected or mis-shaped key is a
// ShapeError naming it and `source`; nothing is modified unless every key fits. With
// `allow_missing`, keys the weights lack keep their values (e.g. a DiT checkpoint initialising a
// Skip-DiT) and are returned; unexpected or mis-shaped keys are still errors. Floating weights
// convert to the model's floating dtype; any other dtype change (an integer or bool tensor for a
// float parameter, int32 for an int64 buffer) is an IoError naming `source`, the key and both
// dtypes.
std::vector<std::string> load_state_dict(torch::nn::Module& module,
                                         const std::map<std::string, at::Tensor>& weights,
                                         const std::string& source, bool allow_missing = false);

// The __metadata__ of every weights file ditlab writes: format, the resolved config (so that
// `dit sample --weights` can rebuild the model) and the step.
std::map<std::string, std::string> weights_metadata(const std::string& config_yaml, int64_t step);

void save_weights(const torch::nn::Module& module, const std::string& path,
                  const std::map<std::string, std::string>& metadata = {});

// The tensors of a weights file: .safetensors, or a torch.save file (.pt, .pth, .bin: an
// official DiT checkpoint, a state dict or a training checkpoint, whose "ema" or else "model"
// entry is taken). Throws IoError naming the file otherwise.
std::map<std::string, at::Tensor> read_weights_file(const std::string& path);

// Whether `path` names a torch.save file (.pt, .pth, .bin) rather than safetensors.
bool is_torch_save_file(const std::string& path);

// Reads `path` (safetensors, or a torch.save file as read_weights_file takes it) and loads it
// strictly; returns the file's metadata (none for a torch.save file).
std::map<std::string, std::string> load_weights(torch::nn::Module& module,
                                                const std::string& path);

}  // namespace ditlab
