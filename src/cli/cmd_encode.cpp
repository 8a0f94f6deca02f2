// `dit encode`: the configured images, encoded once into a latent cache (trainers/latent_encoder.h).
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/cli/config_file.h"
#include "src/config/config_loader.h"
#include "trainers/latent_encoder.h"

namespace ditlab::cli {

int run_encode(int argc, char** argv) {
  Args args("encode",
            {{"config", "experiment YAML: data.* (the images) and autoencoder.* (the kl weights)"},
             {"out", "the cache folder (created; an interrupted cache there is resumed)"},
             {"flip", "also encode every image mirrored, for data.random_flip", false},
             {"store", "moments (posterior mean and std, sampled per step; default) or sample "
                       "(one posterior draw per image)"},
             {"dtype", "float32 (default), float16 or bfloat16 on disk"},
             {"shard-size", "images per shard file (default 8192)"},
             {"batch", "images per encoder pass (default 64)"},
             {"seed", "--store sample: seed of the posterior draws (default 0)"}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  const auto config = load_experiment_config(config_path_or_default(args.get("config")), args.overrides());
  EncodeOptions options;
  options.out_dir = args.require("out");
  options.flip = args.has("flip");
  options.store = args.get_or("store", options.store);
  options.dtype = args.get_or("dtype", options.dtype);
  options.shard_size = args.get_int("shard-size", options.shard_size);
  options.batch_size = args.get_int("batch", options.batch_size);
  options.seed = args.get_int("seed", options.seed);
  options.command_line = joined_command_line(argc, argv);
  encode_dataset(config, options);
  return 0;
}

}  // namespace ditlab::cli
