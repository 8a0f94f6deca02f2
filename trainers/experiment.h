// What `dit train` and `dit sample` share: choosing the device, completing the model config from
// the data, and the run directory's bookkeeping files.
#pragma once
#include <c10/core/Device.h>

#include <memory>
#include <string>

#include "data/dataset.h"
#include "src/distributed/dist_env.h"
#include "src/config/experiment_config.h"

namespace ditlab {

class Communicator;

// "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"; a clear error otherwise.
c10::Device select_device(const std::string& name);
// The same for one rank of a job: "cuda" means the GPU of the rank's local index.
c10::Device select_device(const std::string& name, const DistEnv& env);
// The rule behind it, given how many GPUs the process sees: "cuda" is cuda:<local rank>, or
// cuda:0 where each rank sees one GPU of its own; a local rank beyond the visible GPUs, or an
// explicit cuda:N on several ranks, is a ConfigError.
c10::Device rank_device(const c10::Device& device, const DistEnv& env, int64_t visible_gpus);

// One process's part in a job that may run on several ranks (dit train, encode, eval).
struct RankContext {
  c10::Device device;  // the rank's own GPU (its local index) for cuda
  std::shared_ptr<Communicator> communicator;
};
// The process-wide maths a config asks for, set by every command before it computes:
// train.threads (LibTorch's intra-op threads; 0 keeps its default) and train.tf32 (TF32 for
// float32 matrix products and convolutions on CUDA).
void apply_compute_settings(const TrainConfig& train);

// The opening of such a job: the compute settings, the device and the process group from the launcher's
// environment (one process on its own without one). Ranks other than 0 log only warnings from
// here on: rank 0 reports for all of them.
RankContext join_job(const TrainConfig& train);

// config.model with input_size, in_channels and num_classes from the data (through the autoencoder stage:
// the latents' size and channels) where the config left 0, and refuses values that contradict it.
// A latent cache (data.name latents) must have been encoded by the configured autoencoder.
ModelConfig model_config_for_data(const ExperimentConfig& config, const Dataset& data);

// Replaces "{time}" in run.dir with the local time (YYYYmmdd-HHMMSS).
std::string expand_run_dir(const std::string& pattern);

// Writes config.yaml (resolved) and run_info.yaml (LibTorch version, git revision, command line,
// host, device, threads, date) into `run_dir`.
void write_run_metadata(const std::string& run_dir, const ExperimentConfig& config,
                        const std::string& command_line, const c10::Device& device);

}  // namespace ditlab
