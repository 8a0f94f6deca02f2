// model.name -> backbone. A name is a preset (a table row such as DiT-XL/2) or a family
// (such as dit) whose sizes come from the config. A miss lists every valid name.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/backbone.h"
#include "src/config/experiment_config.h"

namespace ditlab {

// Fills the sizes a preset defines (where the config left them 0) and checks that everything a
// backbone needs is set; throws ConfigError naming the key otherwise. input_size, in_channels
// and num_classes must already be resolved (from the data) before this is called.
ModelConfig resolve_model_config(const ModelConfig& config);

// Builds the backbone for a resolved config, with its official initialisation.
std::shared_ptr<Backbone> build_backbone(const ModelConfig& config);

// Whether the backbone of `model_name` has a feature cache for sampling (Skip-Cache).
bool has_sampling_cache(const std::string& model_name);

// Whether the training step of `model_name`'s backbone can be recorded as a CUDA graph: fixed
// shapes and nothing read back to the host in its forward (not dit-moe, whose routing does).
bool recordable_as_cuda_graph(const std::string& model_name);

// What a model costs, computed from its resolved config without building it.
struct ModelCost {
  int64_t parameters = 0;         // all (U-DiT: FFNs folded, as its paper counts)
  int64_t active_parameters = 0;  // used per token (DiT-MoE: k routed experts + the shared one)
  int64_t forward_macs = 0;       // per sample, as Backbone::forward_macs
  int64_t tokens = 0;             // sequence length (U-DiT: pixels of the first level)
  int64_t training_forward_macs = 0;  // as Backbone::training_forward_macs (the base of training FLOPs)
};
ModelCost model_cost(const ModelConfig& config);

// Every valid model.name: families first, then presets.
std::vector<std::string> model_names();

}  // namespace ditlab
