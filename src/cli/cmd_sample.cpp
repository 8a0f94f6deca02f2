#include <filesystem>

#include "models/registry.h"
#include "models/vae/autoencoder_stage.h"
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/config/config_loader.h"
#include "src/io/atomic_file.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"
#include "trainers/experiment.h"
#include "trainers/sampling.h"

namespace ditlab::cli {

int run_sample(int argc, char** argv) {
  Args args("sample",
            {{"run-dir", "a training run: its config.yaml and ema.safetensors"},
             {"weights", "a weights file (.safetensors); its embedded config, or --config"},
             {"config", "experiment YAML describing the model (for weights without a config)"},
             {"num-per-class", "samples per class (one grid row per class)"},
             {"sampler", "ddpm or ddim"},
             {"steps", "sampling steps"},
             {"cfg-scale", "classifier-free guidance scale (1 = none)"},
             {"seed", "sampling seed"},
             {"device", "auto, cpu or cuda[:N]"},
             {"out", "output: FILE.png (grid) or FILE.safetensors (samples, labels)"}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  const std::string out = args.require("out");
  check_sample_output(out);
  std::string weights;
  ExperimentConfig config;
  if (auto run_dir = args.get("run-dir")) {
    if (args.has("weights")) throw UsageError("dit sample: give --run-dir or --weights, not both");
    std::string config_path = *run_dir + "/config.yaml";
    apply_yaml_text(config, read_file(config_path), config_path);
    weights = *run_dir + "/ema.safetensors";
  } else if (auto w = args.get("weights")) {
    weights = *w;
    if (auto c = args.get("config")) {
      config = load_experiment_config(*c);
    } else if (is_torch_save_file(weights)) {
      throw UsageError("dit sample: '" + weights + "' is a torch.save file, which carries no ditlab config; "
                       "pass --config describing the model (for an official DiT checkpoint, a config "
                       "with its model name and sample.cfg_channels=3)");
    } else {
      auto file = read_safetensors(weights);
      auto it = file.metadata.find("config");
      if (it == file.metadata.end()) {
        throw UsageError("dit sample: '" + weights +
                         "' carries no config (not written by ditlab); pass --config describing "
                         "the model");
      }
      apply_yaml_text(config, it->second, weights + " (embedded config)");
    }
  } else {
    throw UsageError("dit sample: --run-dir or --weights is required\n" + args.usage());
  }
  apply_overrides(config, args.overrides());
  auto& s = config.sample;
  s.num_per_class = args.get_int("num-per-class", s.num_per_class);
  s.sampler = args.get_or("sampler", s.sampler);
  if (s.sampler != "ddpm" && s.sampler != "ddim") {
    throw UsageError("dit sample: --sampler must be ddpm or ddim, got '" + s.sampler + "'");
  }
  s.steps = args.get_int("steps", s.steps);
  s.cfg_scale = args.get_double("cfg-scale", s.cfg_scale);
  s.seed = args.get_int("seed", s.seed);
  if (s.num_per_class < 1 || s.steps < 1 || s.cfg_scale < 0) {
    throw UsageError("dit sample: --num-per-class and --steps must be >= 1, --cfg-scale >= 0");
  }
  check_sample_config(config.model, config.diffusion, s, config.autoencoder);
  apply_compute_settings(config.train);
  const c10::Device device = select_device(args.get_or("device", config.train.device));

  auto model = build_backbone(config.model);
  load_weights(*model, weights);
  model->to(device);
  auto labels = grid_labels(config.model.num_classes, s.num_per_class);
  spdlog::info("sampling {} images ({} per class) with {} steps of {}, guidance {}",
               labels.size(0), s.num_per_class, s.steps, s.sampler, s.cfg_scale);
  // Latent models: the images are the autoencoder's decoding (autoencoder.* of the run's config).
  const auto autoencoder = AutoencoderStage::create(config.autoencoder, device);
  auto samples = generate_samples(*model, config.diffusion, s, labels, device, /*first_index=*/0, autoencoder.get());
  write_samples(out, samples, labels, s.num_per_class);
  spdlog::info("wrote {}", out);
  return 0;
}

}  // namespace ditlab::cli
