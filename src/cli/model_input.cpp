#include "src/cli/model_input.h"

#include <exception>
#include <memory>

#include "data/dataset.h"
#include "src/common/error.h"
#include "trainers/experiment.h"

namespace ditlab::cli {

namespace {
// The flags that would give what the config leaves to its data.
std::string missing_flags(const ModelConfig& mc) {
  std::string out;
  auto add = [&out](bool missing, const char* flag) {
    if (missing) out += (out.empty() ? "" : ", ") + std::string(flag);
  };
  add(mc.input_size == 0, "--input-size");
  add(mc.in_channels == 0, "--in-channels");
  add(mc.num_classes == 0, "--num-classes");
  return out;
}
}  // namespace

std::vector<Flag> model_input_flags() {
  return {{"input-size", "model input H = W (default: the config's data, else 32, the latent of 256x256 images)"},
          {"in-channels", "input channels (default: the config's data, else 4)"},
          {"num-classes", "classes without the null class (default: the config's data, else 1000)"}};
}

void resolve_model_input(ExperimentConfig& config, const Args& args, const std::string& command) {
  ModelConfig& mc = config.model;
  if (args.has("input-size")) mc.input_size = args.get_int("input-size", 0);
  if (args.has("in-channels")) mc.in_channels = args.get_int("in-channels", 0);
  if (args.has("num-classes")) mc.num_classes = args.get_int("num-classes", 0);
  const bool left_to_data = mc.input_size == 0 || mc.in_channels == 0 || mc.num_classes == 0;
  if (args.has("config") && left_to_data) {
    ModelConfig from_data;
    try {
      const std::shared_ptr<Dataset> dataset = make_dataset(config.data);
      ExperimentConfig unset = config;
      unset.model.input_size = unset.model.in_channels = unset.model.num_classes = 0;
      from_data = model_config_for_data(unset, *dataset);
    } catch (const std::exception& e) {
      throw UsageError(command + ": the config leaves the model's input size, channels or classes to its data, "
                       "which could not be read (" + e.what() + "); pass " + missing_flags(mc));
    }
    if (mc.input_size == 0) mc.input_size = from_data.input_size;
    if (mc.in_channels == 0) mc.in_channels = from_data.in_channels;
    if (mc.num_classes == 0) mc.num_classes = from_data.num_classes;
  }
  if (mc.input_size == 0) mc.input_size = 32;
  if (mc.in_channels == 0) mc.in_channels = 4;
  if (mc.num_classes == 0) mc.num_classes = 1000;
}

}  // namespace ditlab::cli
