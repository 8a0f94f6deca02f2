// `dit eval`: FID, precision, recall, Inception Score and accuracy of a run's samples
// (trainers/evaluation.h).
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/common/error.h"
#include "src/config/config_loader.h"
#include "src/io/atomic_file.h"
#include "trainers/evaluation.h"

namespace ditlab::cli {

int run_eval(int argc, char** argv) {
  Args args("eval",
            {{"run-dir", "a finished training run (config.yaml, ema.safetensors)"},
             {"weights", "ema (default) or model"},
             {"checkpoint", "the step of a kept checkpoint to measure instead of the final weights "
                            "(its line goes to evals.jsonl only)"},
             {"num-samples", "generated images (default eval.num_samples, 10000)"},
             {"cfg-scale", "classifier-free guidance scale (default: the run's sample.cfg_scale)"},
             {"sampler", "ddpm or ddim (default: the run's sample.sampler)"},
             {"steps", "sampling steps (default: the run's sample.steps)"},
             {"classifier", "eval.classifier: weights of dit train-classifier"},
             {"inception", "eval.inception: a TorchScript Inception (sets eval.features inception)"}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  EvalOptions options;
  options.run_dir = args.require("run-dir");
  options.weights = args.get_or("weights", "ema");
  options.checkpoint_step = args.get_int("checkpoint", -1);
  if (args.has("checkpoint") && options.checkpoint_step < 0) {
    throw UsageError("dit eval: --checkpoint takes a step (>= 0), got " + args.require("checkpoint"));
  }
  options.command_line = joined_command_line(argc, argv);
  ExperimentConfig config;
  const std::string config_path = options.run_dir + "/config.yaml";
  apply_yaml_text(config, read_file(config_path), config_path);
  apply_overrides(config, args.overrides());
  auto& s = config.sample;
  s.sampler = args.get_or("sampler", s.sampler);
  if (s.sampler != "ddpm" && s.sampler != "ddim") {
    throw UsageError("dit eval: --sampler must be ddpm or ddim, got '" + s.sampler + "'");
  }
  s.steps = args.get_int("steps", s.steps);
  s.cfg_scale = args.get_double("cfg-scale", s.cfg_scale);
  config.eval.num_samples = args.get_int("num-samples", config.eval.num_samples);
  if (config.eval.num_samples < 2 || s.steps < 1 || s.cfg_scale < 0) {
    throw UsageError("dit eval: --num-samples must be >= 2, --steps >= 1, --cfg-scale >= 0");
  }
  if (auto c = args.get("classifier")) config.eval.classifier = *c;
  if (auto i = args.get("inception")) {
    config.eval.inception = *i;
    config.eval.features = "inception";
  }
  evaluate_run(config, options);
  return 0;
}

}  // namespace ditlab::cli
