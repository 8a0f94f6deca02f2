#include "trainers/resume.h"

#include "src/common/error.h"
#include "src/common/sample_rng.h"
#include "src/config/config_loader.h"
#include "src/config/option_table.h"

namespace ditlab {

bool free_on_resume(const std::string& key) {
  static const std::vector<std::string> kFree = {
      "train.steps",      "train.log_every", "train.threads",     "train.device",
      "train.max_bad_steps", "data.prefetch", "checkpoint.every", "checkpoint.keep",
      "checkpoint.keep_every", "run.dir", "train.dist_backend", "train.dist_timeout_s",
      "train.grad_bucket_mb", "train.grad_reduce_overlap",  // not grad_reduce_dtype: bf16 sums round
      "train.init_from", "train.peak_tflops",
      "train.tf32"};  // like train.device: the same products, rounded otherwise  // a resumed run takes its weights from the checkpoint
  for (const auto& k : kFree) {
    if (key == k) return true;
  }
  // Sampling and evaluation after training do not touch training.
  return key.rfind("sample.", 0) == 0 || key.rfind("eval.", 0) == 0 || key.rfind("classifier.", 0) == 0;
}

std::vector<std::string> check_resume_config(const ExperimentConfig& saved,
                                             const ExperimentConfig& now, bool allow_change) {
  std::vector<std::string> refused, allowed;
  for (const auto& key : differing_keys(saved, now)) {
    if (free_on_resume(key)) continue;
    const bool architecture = key.rfind("model.", 0) == 0;
    (architecture || !allow_change ? refused : allowed).push_back(key);
  }
  if (!refused.empty()) {
    std::string msg = "the config differs from the checkpoint's in keys that change the maths:";
    for (const auto& key : refused) {
      const OptionSpec* spec = find_option(key);
      msg += "\n  " + key + ": checkpoint " + spec->get(saved) + ", now " + spec->get(now);
    }
    msg += "\nUse the checkpoint's values, or pass --allow-config-change to change them on purpose"
           " (model.* can never change on resume).";
    throw ConfigError(msg);
  }
  return allowed;
}

bool check_resume_random_streams(const std::map<std::string, std::string>& trainer_metadata,
                                 const std::string& checkpoint_dir, bool allow_change) {
  const auto saved = trainer_metadata.find("random_streams");
  if (saved != trainer_metadata.end() && saved->second == kRandomStreams) return false;
  if (allow_change) return true;
  throw ConfigError(checkpoint_dir + " was written by a ditlab that drew its per-sample random choices "
                    "(timesteps, noise, label drops, flips, the epoch order) from other streams (" +
                    (saved == trainer_metadata.end() ? std::string("32-bit seeds, before random_streams "
                                                                   "was recorded")
                                                     : saved->second) +
                    ", now " + kRandomStreams + "): resumed, the run would not continue as it began, "
                    "and the current epoch would repeat some images and skip others. Finish it with "
                    "the ditlab that started it, or pass --allow-config-change to go on regardless");
}

bool check_resume_dataset_size(const std::map<std::string, std::string>& trainer_metadata,
                               const std::string& checkpoint_dir, int64_t size, bool allow_change) {
  const auto saved = trainer_metadata.find("dataset_size");
  if (saved == trainer_metadata.end() || saved->second == std::to_string(size)) return false;
  if (allow_change) return true;
  throw ConfigError("the dataset now holds " + std::to_string(size) + " items, the run that wrote " +
                    checkpoint_dir + " trained on " + saved->second + ": the data order would not "
                    "continue where it stopped. Restore the data, or pass --allow-config-change to "
                    "go on with the new data on purpose");
}

}  // namespace ditlab
