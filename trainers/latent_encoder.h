// `dit encode`: encodes the configured image dataset once with the configured autoencoder into a
// latent cache (data/latent_cache.h) that `data.name: latents` trains from.
//   - Shard s holds images [s * shard_size, (s + 1) * shard_size); with several ranks (torchrun,
//     srun, mpirun, scripts/launch.sh) rank r encodes shards r, r + world, ... in rounds that end
//     in a barrier, so a rank that dies is reported by the others.
//   - Interrupted, the same command resumes: shards already written (atomically) and belonging to
//     the same settings are kept; other settings in the same folder are refused by name.
//   - The manifest says complete only after every shard was checked.
#pragma once
#include <cstdint>
#include <string>

#include "src/config/experiment_config.h"

namespace ditlab {

struct EncodeOptions {
  std::string out_dir;
  bool flip = false;             // also encode each image mirrored (fast-DiT's flip copies)
  std::string store = "moments";  // moments: posterior mean and std; sample: one posterior draw
  std::string dtype = "float32";  // float32, float16 or bfloat16 on disk
  int64_t shard_size = 8192;      // images per shard file
  int64_t batch_size = 64;        // images per encoder forward
  int64_t seed = 0;               // store=sample: the posterior draws come from (seed, image)
  std::string command_line;
};

struct EncodeSummary {
  int64_t count = 0;
  int64_t shards_encoded = 0, shards_kept = 0;  // by this rank
  double seconds = 0.0;
  double images_per_s = 0.0;  // this rank's encoding rate (kept shards excluded)
};

EncodeSummary encode_dataset(const ExperimentConfig& config, const EncodeOptions& options);

}  // namespace ditlab
