// `dit forward`: one float32 forward pass on the CPU, so any implementation can be compared with
// ours on the same weights and inputs (see scripts/reference/ and tests/cli/).
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "models/registry.h"
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/common/error.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"

namespace ditlab::cli {

int run_forward(int argc, char** argv) {
  Args args("forward",
            {{"model", "preset (DiT-XL/2 ...) or family (dit, with --depth etc.)"},
             {"weights", "weights in the official key layout (.safetensors)"},
             {"inputs", ".safetensors with x [N,C,H,W] float32, t [N] int64, y [N] int64"},
             {"output", ".safetensors to write `out` into"},
             {"input-size", "spatial size H = W (default 32)"},
             {"in-channels", "input channels C (default 4)"},
             {"num-classes", "classes without the null class (default 1000)"},
             {"learn-sigma", "true or false (default true)"},
             {"depth", "blocks (family names only)"},
             {"hidden-size", "width (family names only)"},
             {"num-heads", "heads (family names only)"},
             {"patch-size", "patch size (family names only)"},
             {"level-depths", "u-dit blocks per level, e.g. 1,1,2,1,1 (family name only)"},
             {"conditioning", "adaln_zero (default), adaln, cross_attention, in_context"},
             {"cfg-scale", "if given, run forward_with_cfg with this scale"},
             {"cfg-channels", "guided channels for --cfg-scale (0 = all noise channels)"}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  args.reject_overrides();  // the model is described by the options
  ModelConfig mc;
  mc.name = args.require("model");
  mc.input_size = args.get_int("input-size", 32);
  mc.in_channels = args.get_int("in-channels", 4);
  mc.num_classes = args.get_int("num-classes", 1000);
  mc.learn_sigma = args.get_bool("learn-sigma", true);
  mc.depth = args.get_int("depth", 0);
  mc.hidden_size = args.get_int("hidden-size", 0);
  mc.num_heads = args.get_int("num-heads", 0);
  mc.patch_size = args.get_int("patch-size", 0);
  const std::string levels = args.get_or("level-depths", "");
  for (size_t start = 0; start < levels.size();) {
    const size_t comma = std::min(levels.find(',', start), levels.size());
    const std::string item = levels.substr(start, comma - start);
    try {
      size_t used = 0;
      mc.level_depths.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw UsageError("--level-depths '" + levels + "': expected integers separated by commas");
    }
    start = comma + 1;
  }
  mc.conditioning = args.get_or("conditioning", mc.conditioning);
  auto model = build_backbone(mc);
  load_weights(*model, args.require("weights"));
  model->eval();

  const std::string inputs_path = args.require("inputs");
  auto inputs = read_safetensors(inputs_path);
  for (const char* key : {"x", "t", "y"}) {
    if (!inputs.tensors.count(key)) {
      throw IoError(inputs_path + ": missing tensor '" + key + "' (expected x, t and y)");
    }
  }
  auto x = inputs.tensors["x"].to(at::kFloat);
  auto t = inputs.tensors["t"].to(at::kLong);
  auto y = inputs.tensors["y"].to(at::kLong);
  // Inputs from a file: shapes, batch sizes and the label range, each named in the error,
  // instead of an index error deep inside an embedding (forward itself reads no values).
  model->validate_inputs(x, t, y);
  torch::NoGradGuard no_grad;
  at::Tensor out = args.has("cfg-scale")
                       ? model->forward_with_cfg(x, t, y, args.get_double("cfg-scale", 1.0),
                                                 args.get_int("cfg-channels", 0))
                       : model->forward(x, t, y).out;
  write_safetensors(args.require("output"), {{"out", out.contiguous()}});
  return 0;
}

}  // namespace ditlab::cli
