#include "trainers/experiment.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>

#include <spdlog/spdlog.h>

#include "data/latent_cache.h"
#include "models/vae/autoencoder_stage.h"
#include "src/common/compat.h"
#include "src/common/build_info.h"
#include "src/common/error.h"
#include "src/config/config_loader.h"
#include "src/distributed/communicator.h"
#include "src/io/atomic_file.h"
#include "src/io/checksum.h"

namespace ditlab {

c10::Device select_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? c10::Device("cuda") : c10::Device("cpu");
  c10::Device device("cpu");
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
    throw ConfigError("train.device '" + name + "' is not a device; expected auto, cpu, cuda or cuda:N");
  }
  if (device.is_cuda() && !torch::cuda::is_available()) {
    throw ConfigError("train.device '" + name + "' asks for CUDA, but no GPU is visible to this "
                      "LibTorch build; use train.device=cpu");
  }
  if (!device.is_cpu() && !device.is_cuda()) {
    throw ConfigError("train.device '" + name + "': only cpu and cuda are supported");
  }
  return device;
}

c10::Device rank_device(const c10::Device& device, const DistEnv& env, int64_t visible_gpus) {
  if (!device.is_cuda()) return device;
  if (device.has_index()) {
    // NCCL refuses two ranks on one GPU, and Gloo would share it: neither is what was meant.
    if (env.world_size > 1) {
      throw ConfigError("train.device " + device.str() + " puts all " + std::to_string(env.world_size) +
                        " ranks on one GPU; use train.device=cuda (each rank takes the GPU of its local "
                        "rank) and choose GPUs with CUDA_VISIBLE_DEVICES");
    }
    return device;
  }
  if (env.local_rank < visible_gpus) return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  // One GPU per task (srun --gpus-per-task=1, --gpu-bind): each rank sees only its own.
  if (visible_gpus == 1) return c10::Device(c10::kCUDA, 0);
  throw ConfigError("rank " + std::to_string(env.rank) + " has local rank " + std::to_string(env.local_rank) +
                    " (" + env.launcher + ") but sees " + std::to_string(visible_gpus) +
                    " GPUs; start at most one rank per visible GPU on each node, or give each rank "
                    "one GPU of its own");
}

c10::Device select_device(const std::string& name, const DistEnv& env) {
  const c10::Device device = select_device(name);
  return rank_device(device, env, device.is_cuda() ? static_cast<int64_t>(torch::cuda::device_count()) : 0);
}

void apply_compute_settings(const TrainConfig& train) {
  if (train.threads > 0) at::set_num_threads(static_cast<int>(train.threads));
  // PyTorch's default since 1.12 is full float32 products on CUDA (cuDNN's convolutions already
  // allow TF32); DiT's scripts turn both on, and so does ditlab unless train.tf32 is false.
  compat::set_cuda_tf32(train.tf32);
}

RankContext join_job(const TrainConfig& train) {
  apply_compute_settings(train);
  const DistEnv env = detect_dist_env();
  const c10::Device device = select_device(train.device, env);
  compat::set_current_device(device);
  auto communicator = std::make_shared<Communicator>(
      env, train.dist_backend, std::chrono::seconds(train.dist_timeout_s), device.is_cuda());
  if (!communicator->is_main()) spdlog::set_level(spdlog::level::warn);
  return {device, std::move(communicator)};
}

namespace {
void require_cache_autoencoder(const LatentCacheManifest& cache, const std::string& cache_dir,
                               const AutoencoderConfig& autoencoder) {
  const auto& made_by = cache.autoencoder;
  if (autoencoder.type != "kl") {
    throw ConfigError("data.name latents (" + cache_dir + ") needs the autoencoder that encoded it, "
                      "to decode samples: set autoencoder.type=kl and autoencoder.weights=" +
                      made_by.weights);
  }
  if (autoencoder.weights.empty()) {
    throw ConfigError("autoencoder.weights is empty; the latent cache " + cache_dir +
                      " was encoded by " + made_by.weights);
  }
  const uint32_t crc = crc32_of_file(autoencoder.weights);
  if (crc != made_by.crc32) {
    char detail[96];
    std::snprintf(detail, sizeof(detail), " (crc32 %08x) is not the autoencoder that encoded it (crc32 %08x, ",
                  crc, made_by.crc32);
    throw ConfigError("autoencoder.weights " + autoencoder.weights + detail + made_by.weights +
                      "); the cache " + cache_dir + " must be encoded again with these weights");
  }
  if (cache.store == "sample" && !autoencoder.sample_posterior) {
    throw ConfigError("autoencoder.sample_posterior=false trains on the posterior means, but the "
                      "latent cache " + cache_dir + " holds one posterior sample per image "
                      "(encode it with --store moments)");
  }
}

}  // namespace

ModelConfig model_config_for_data(const ExperimentConfig& config, const Dataset& data) {
  // A latent cache already holds what the backbone sees.
  LatentShape latent{data.channels(), 1};
  std::string source = "the data";
  if (const LatentCacheManifest* cache = data.latent_cache()) {
    require_cache_autoencoder(*cache, config.data.path, config.autoencoder);
    source = "the latent cache " + config.data.path;
  } else {
    latent = latent_shape(config.autoencoder, data.channels());
  }
  const int64_t side = latent_side(data.image_size(), latent);
  ModelConfig c = config.model;
  auto fill = [&source](const char* key, int64_t& value, int64_t from_data) {
    if (value == 0) {
      value = from_data;
    } else if (value != from_data) {
      throw ConfigError("model." + std::string(key) + " is " + std::to_string(value) +
                        " but " + source + " gives " + std::to_string(from_data) +
                        "; set it to 0 (from the data) or to " + std::to_string(from_data));
    }
  };
  fill("input_size", c.input_size, side);
  fill("in_channels", c.in_channels, latent.channels);
  fill("num_classes", c.num_classes, data.num_classes());
  return c;
}

std::string expand_run_dir(const std::string& pattern) {
  auto pos = pattern.find("{time}");
  if (pos == std::string::npos) return pattern;
  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  return pattern.substr(0, pos) + stamp + pattern.substr(pos + 6);
}

namespace {
// The source tree's revision now (not when CMake last ran), "+dirty" with uncommitted changes.
std::string git_revision() {
  auto run = [](const std::string& command) {
    std::string out;
    if (FILE* pipe = ::popen(command.c_str(), "r")) {
      char buf[256];
      while (std::fgets(buf, sizeof(buf), pipe)) out += buf;
      ::pclose(pipe);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
  };
  const std::string git = "git -C '" + std::string(DITLAB_SOURCE_DIR) + "' ";
  std::string rev = run(git + "rev-parse --short=12 HEAD 2>/dev/null");
  if (rev.empty()) return build_git_revision();  // no git, or the sources moved: the build's revision
  if (!run(git + "status --porcelain --untracked-files=no 2>/dev/null").empty()) rev += "+dirty";
  return rev;
}
}  // namespace

void write_run_metadata(const std::string& run_dir, const ExperimentConfig& config,
                        const std::string& command_line, const c10::Device& device) {
  write_file_atomically(run_dir + "/config.yaml", to_yaml(config));
  char host[256] = "unknown";
  ::gethostname(host, sizeof(host) - 1);
  std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S%z", std::localtime(&now));
  std::string info;
  info += "ditlab_git_revision: \"" + git_revision() + "\"\n";
  info += "libtorch_version: \"" + compat::torch_version() + "\"\n";
  info += "command_line: \"" + command_line + "\"\n";
  info += "host: \"" + std::string(host) + "\"\n";
  info += "device: \"" + device.str() + "\"\n";
  info += "threads: " + std::to_string(at::get_num_threads()) + "\n";
  info += std::string("cuda_tf32: ") + (compat::cuda_tf32() ? "true" : "false") + "\n";
  const char* blas_core = std::getenv("OPENBLAS_CORETYPE");
  info += "openblas_coretype: \"" + std::string(blas_core ? blas_core : "auto") + "\"\n";
  info += "started: \"" + std::string(date) + "\"\n";
  write_file_atomically(run_dir + "/run_info.yaml", info);
}

}  // namespace ditlab
