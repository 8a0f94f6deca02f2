// `dit bench`: times full training steps (forward, backward, all-reduce, clipping, AdamW, EMA:
// the trainer's own TrainingStep) on synthetic latents, or whole sampling runs with --sample,
// or the configured dataset's batch loading with --data, and prints one JSON line. Nothing is
// written to disk.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/epoch_sampler.h"
#include "models/registry.h"
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/cli/model_input.h"
#include "src/common/compat.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/op_counter.h"
#include "src/common/peak_tflops.h"
#include "src/common/text.h"
#include "src/config/config_loader.h"
#include "src/distributed/communicator.h"
#include "src/io/atomic_file.h"
#include "trainers/experiment.h"
#include "trainers/sampling.h"
#include "trainers/training_step.h"

namespace ditlab::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// The loader alone, as the trainer uses it (the epoch sampler's batches, assembled on this
// thread), so its rate can be set against the training step's.
int bench_data_loading(const ExperimentConfig& config, int64_t batch, int64_t steps, int64_t warmup) {
  if (batch < 1 || steps < 1 || warmup < 0) {
    throw UsageError("bench: --batch and --steps must be >= 1 and --warmup >= 0");
  }
  auto dataset = make_dataset(config.data);
  EpochSampler sampler(dataset->size(), batch, static_cast<uint64_t>(config.train.seed));
  std::vector<double> batch_ms;
  for (int64_t i = 0; i < warmup + steps; ++i) {
    const auto indices = sampler.global_batch(i);
    const auto start = Clock::now();
    Batch b = dataset->get_batch(indices);
    if (i >= warmup) batch_ms.push_back(1e3 * seconds_since(start));
  }
  const double med = median(batch_ms);
  std::printf("{\"mode\": \"data\", \"dataset\": \"%s\", \"path\": \"%s\", \"size\": %lld, "
              "\"batch\": %lld, \"steps\": %lld, \"images_per_s\": %.1f, \"batch_ms_median\": %.3f, "
              "\"batch_ms_min\": %.3f, \"batch_ms_max\": %.3f}\n",
              config.data.name.c_str(), config.data.path.c_str(), static_cast<long long>(dataset->size()),
              static_cast<long long>(batch), static_cast<long long>(steps),
              static_cast<double>(batch) / (med / 1e3), med,
              *std::min_element(batch_ms.begin(), batch_ms.end()),
              *std::max_element(batch_ms.begin(), batch_ms.end()));
  std::fflush(stdout);
  return 0;
}

// Runs `iteration` once under an OpCounter and writes the counts to `path` as one JSON object
// (operator name -> calls); returns the total. Counting slows the calls down, so it runs after
// the timed iterations.
int64_t count_operators(const std::string& path, const std::function<void()>& iteration) {
  std::map<std::string, int64_t> counts;
  {
    OpCounter counter;
    iteration();
    counts = counter.counts();
  }
  std::string json = "{";
  int64_t total = 0;
  for (const auto& [name, calls] : counts) {
    json += (json.size() > 1 ? ", " : "") + json_quoted(name) + ": " + std::to_string(calls);
    total += calls;
  }
  write_file_atomically(path, json + "}\n");
  return total;
}

}  // namespace

int run_bench(int argc, char** argv) {
  std::vector<Flag> flags = {
             {"model", "preset or family (default: the config's model.name)"},
             {"config", "experiment YAML whose model, diffusion and train sections to use"},
             {"batch", "images per step (default: train.global_batch_size)"},
             {"steps", "timed steps (default 10; with --sample: timed sampling runs, default 2)"},
             {"warmup", "untimed steps first (default 3; with --sample 1)"},
             {"precision", "fp32 or bf16 (default: train.precision; if auto, bf16 on CUDA, fp32 on CPUs)"},
             {"device", "cpu, cuda or cuda:N (default: cuda when available)"},
             {"threads", "CPU threads (default: LibTorch's)"},
             {"peak-tflops", "device peak for the MFU (default: known GPUs; CPUs: measured matmul)"},
             {"count-ops", "also count the ATen operators of one more step into FILE (JSON, per name)"},
             {"sample", "time sampling (sample.sampler, sample.steps, sample.cfg_scale) instead", false},
             {"data", "time loading the configured dataset's batches alone (data.*) instead", false}};
  for (auto& flag : model_input_flags()) flags.push_back(flag);
  Args args("bench", flags, argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  ExperimentConfig config;
  if (args.has("config")) {
    config = load_experiment_config(args.require("config"), args.overrides());
  } else {
    apply_overrides(config, args.overrides());
  }
  if (args.has("threads")) config.train.threads = args.get_int("threads", 0);
  apply_compute_settings(config.train);
  if (args.has("data")) {
    return bench_data_loading(config, args.get_int("batch", config.train.global_batch_size),
                              args.get_int("steps", 50), args.get_int("warmup", 3));
  }
  ModelConfig& mc = config.model;
  if (args.has("model")) mc.name = args.require("model");
  resolve_model_input(config, args, "bench");
  mc = resolve_model_config(mc);
  const bool sample_mode = args.has("sample");
  const int64_t batch = args.get_int("batch", config.train.global_batch_size);
  const int64_t steps = args.get_int("steps", sample_mode ? 2 : 10);
  int64_t warmup = args.get_int("warmup", sample_mode ? 1 : 3);
  if (batch < 1 || steps < 1 || warmup < 0) {
    throw UsageError("bench: --batch and --steps must be >= 1 and --warmup >= 0");
  }
  // With train.cuda_graph the first two steps run eagerly and the third records the graph: the
  // timed steps must all be replays.
  if (config.train.cuda_graph && !sample_mode && warmup < 3) {
    spdlog::info("bench: train.cuda_graph needs 3 warm-up steps (2 eager, 1 recording); --warmup {} -> 3", warmup);
    warmup = 3;
  }
  const c10::Device device = select_device(args.get_or("device", config.train.device));
  // --precision, else train.precision from --config or a train.precision=... override; "auto"
  // (its default in ExperimentConfig) is resolved as the training step resolves it.
  std::string precision = config.train.precision;
  if (precision == "auto") precision = compat::bf16_supported(device) ? "bf16" : "fp32";
  precision = args.get_or("precision", precision);
  if (precision != "fp32" && precision != "bf16") {
    throw UsageError("bench: --precision must be fp32 or bf16, not '" + precision + "'");
  }
  const bool bf16 = precision == "bf16";
  config.train.precision = precision;
  config.train.global_batch_size = batch;
  config.train.grad_accum_steps = 1;
  config.sample.seed = config.train.seed;
  config.sample.batch_size = batch;  // --sample times the whole --batch at once
  const std::string device_name = device_display_name(device);
  const double peak = args.has("peak-tflops") ? args.get_double("peak-tflops", 0.0)
                                              : default_peak_tflops(device, bf16);
  if (peak < 0) {
    throw UsageError("bench: --peak-tflops must be >= 0 (0: no MFU), not " + args.require("peak-tflops"));
  }

  // One process on its own: the communicator's collectives are no-ops.
  Communicator communicator(DistEnv{}, "auto", std::chrono::seconds(60), device.is_cuda());
  torch::manual_seed(static_cast<uint64_t>(config.train.seed));
  auto model = build_backbone(mc);
  int64_t parameters = 0;
  for (const auto& p : model->parameters()) parameters += p.numel();
  const double macs = static_cast<double>(model->forward_macs());
  Batch data;
  data.images = at::randn({batch, mc.in_channels, mc.input_size, mc.input_size});
  data.labels = at::randint(mc.num_classes, {batch}, at::TensorOptions().dtype(at::kLong));
  if (device.is_cuda()) {  // as the training loader gives them
    data.images = data.images.pin_memory();
    data.labels = data.labels.pin_memory();
  }
  spdlog::info("bench {} on {} ({}), batch {}, {}x{}x{}, {}, {} warm-up + {} timed {}",
               mc.name, device.str(), device_name, batch, mc.in_channels, mc.input_size,
               mc.input_size, precision, warmup, steps, sample_mode ? "sampling runs" : "steps");

  const std::string ops_file = args.get_or("count-ops", "");
  int64_t ops_per_iteration = -1;  // -1: not counted
  std::vector<double> step_ms;
  double flops_per_iteration = 0.0;  // model FLOPs of one timed iteration
  if (!sample_mode) {
    TrainingStep step(config, model, device, communicator, /*with_ema=*/true);
    step.model().train();
    flops_per_iteration = 6.0 * static_cast<double>(model->training_forward_macs()) * static_cast<double>(batch);
    auto iteration = [&](int64_t i) {
      StepResult result = step.run(i, data);
      compat::synchronize(device);
      if (!result.applied()) spdlog::warn("step {}: non-finite loss (synthetic data)", i + 1);
    };
    for (int64_t i = 0; i < warmup + steps; ++i) {
      if (i == warmup) compat::reset_peak_memory(device);
      compat::synchronize(device);
      const auto start = Clock::now();
      iteration(i);
      if (i >= warmup) step_ms.push_back(1e3 * seconds_since(start));
    }
    if (!ops_file.empty()) ops_per_iteration = count_operators(ops_file, [&] { iteration(warmup + steps); });
  } else {
    model->to(device);
    const bool guided = config.sample.cfg_scale != 1.0;
    const double evaluations = static_cast<double>(config.sample.steps) * (guided ? 2.0 : 1.0);
    flops_per_iteration = 2.0 * macs * evaluations * static_cast<double>(batch);
    // The path dit sample and dit eval take, at sample.precision = --precision.
    config.sample.precision = precision;
    auto iteration = [&] {
      generate_samples(*model, config.diffusion, config.sample, data.labels, device);
      compat::synchronize(device);
    };
    for (int64_t i = 0; i < warmup + steps; ++i) {
      if (i == warmup) compat::reset_peak_memory(device);
      compat::synchronize(device);
      const auto start = Clock::now();
      iteration();
      if (i >= warmup) step_ms.push_back(1e3 * seconds_since(start));
    }
    if (!ops_file.empty()) ops_per_iteration = count_operators(ops_file, iteration);
  }
  const double med = median(step_ms);
  const double images_per_s = static_cast<double>(batch) / (med / 1e3);
  const double tflops = flops_per_iteration / (med / 1e3) / 1e12;
  // A sampling run's step is one sampler step (one guided network evaluation of the batch).
  const double per_step = sample_mode ? 1.0 / static_cast<double>(config.sample.steps) : 1.0;
  for (double& ms : step_ms) ms *= per_step;
  char ops_per_step[32] = "null";
  if (ops_per_iteration >= 0) {
    std::snprintf(ops_per_step, sizeof(ops_per_step), "%.10g", static_cast<double>(ops_per_iteration) * per_step);
  }
  // A recorded CUDA graph keeps its activations in its own memory pool, reserved once while it
  // is recorded; the replays allocate nothing, so their allocated peak would show only the
  // weights and optimizer state. For graphs the reserved peak is the figure.
  const bool graph_pool = device.is_cuda() && config.train.cuda_graph && !sample_mode;
  const int64_t reserved = compat::peak_reserved_memory_bytes(device);
  const double peak_mb = static_cast<double>(graph_pool ? reserved : compat::peak_memory_bytes(device)) / 1e6;
  const char* peak_kind = graph_pool ? "cuda_reserved" : device.is_cuda() ? "cuda_allocated" : "cpu_max_rss";
  const std::string reserved_mb = reserved < 0 ? "null" : std::to_string(static_cast<double>(reserved) / 1e6);
  std::printf(
      "{\"mode\": \"%s\", \"model\": \"%s\", \"device\": \"%s\", \"device_name\": \"%s\", "
      "\"precision\": \"%s\", \"batch\": %lld, \"input_size\": %lld, \"in_channels\": %lld, "
      "\"threads\": %d, \"checkpoint_blocks\": %s, \"cuda_graph\": %s, \"tf32\": %s, \"steps\": %lld, \"parameters\": %lld, \"gmacs_per_image\": %.3f, "
      "\"images_per_s\": %.3f, \"step_ms_median\": %.3f, \"step_ms_min\": %.3f, "
      "\"step_ms_max\": %.3f, \"tflops\": %.4g, \"peak_tflops\": %.2f, \"mfu\": %s, "
      "\"peak_memory_mb\": %.1f, \"peak_memory_kind\": \"%s\", \"peak_reserved_mb\": %s, \"aten_ops_per_step\": %s, "
      "\"libtorch\": \"%s\"}\n",
      sample_mode ? "sample" : "train", mc.name.c_str(), device.str().c_str(), device_name.c_str(),
      precision.c_str(), static_cast<long long>(batch), static_cast<long long>(mc.input_size),
      static_cast<long long>(mc.in_channels), at::get_num_threads(),
      mc.checkpoint_blocks ? "true" : "false", config.train.cuda_graph ? "true" : "false",
      config.train.tf32 ? "true" : "false", static_cast<long long>(steps),
      static_cast<long long>(parameters), macs / 1e9, images_per_s, med * per_step,
      *std::min_element(step_ms.begin(), step_ms.end()),
      *std::max_element(step_ms.begin(), step_ms.end()), tflops, peak,
      peak > 0 ? std::to_string(tflops / peak).c_str() : "null",
      peak_mb, peak_kind, reserved_mb.c_str(), ops_per_step, compat::torch_version().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace ditlab::cli
