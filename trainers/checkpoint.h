// Checkpoints: one directory per step, <run.dir>/checkpoints/step-NNNNNNNN/, holding
//   model.safetensors, ema.safetensors   weights in the official key layout (+ config metadata)
//   optimizer.safetensors                AdamW moments and step counts by parameter name
//   trainer_state.safetensors            RNG states, the open logging window; metadata: step,
//                                        epoch, position in the epoch, seed, world size
//   config.yaml                          the resolved config
//   manifest.json                        size and CRC-32 of every file above, written last
// The directory is assembled under a temporary name, every file fsynced, then renamed into
// place; `checkpoints/latest` (a file naming the directory) moves only afterwards. A directory
// whose manifest is missing or does not match its files is never used.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ditlab {

// "step-00000100": the name of a step's checkpoint folder (and of its sample grid).
std::string step_name(int64_t step);

struct Checkpoint {
  int64_t step = 0;  // optimizer steps completed
  std::map<std::string, at::Tensor> model, ema, optimizer, trainer_state;
  std::map<std::string, std::string> trainer_metadata;  // step, epoch, position, seed, ...
  std::string config_yaml;
  std::string dir;  // the folder it was read from (empty for one being written)
};

// Writes checkpoints/step-<step>/ atomically, moves `latest`, then deletes all but the newest
// `keep` checkpoints (keep <= 0 keeps all) except steps that are multiples of `keep_every`
// (> 0). Returns the directory. Throws IoError naming the path (the earlier checkpoints are
// untouched when writing fails).
std::string save_checkpoint(const std::string& run_dir, const Checkpoint& checkpoint, int64_t keep,
                            int64_t keep_every);

// Reads and verifies one checkpoint directory (manifest, sizes, checksums, file structure).
// Throws IoError naming the file and the problem.
Checkpoint load_checkpoint(const std::string& dir);

// The complete checkpoint directories of a run, newest first.
std::vector<std::string> list_checkpoints(const std::string& run_dir);

// Renames the checkpoints of `run_dir` newer than `step` to <name>.stale, out of the listing: a
// run resumed from `step` starts a new branch, and the newer ones (corrupt, or from a run with
// other settings) must not be picked up by a later --resume auto.
void set_aside_checkpoints_after(const std::string& run_dir, int64_t step);

// The newest checkpoint of `run_dir` that verifies, newest step first; each one skipped is
// reported through `on_skip(dir, reason)`. nullopt when there is none.
std::optional<Checkpoint> load_latest_complete(
    const std::string& run_dir,
    const std::function<void(const std::string&, const std::string&)>& on_skip = {});

}  // namespace ditlab
