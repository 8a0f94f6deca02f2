#include "trainers/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <filesystem>
#include <csignal>
#include <optional>

#include <yaml-cpp/yaml.h>

#include "data/epoch_sampler.h"
#include "data/prefetch_loader.h"
#include "models/registry.h"
#include "src/common/compat.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/peak_tflops.h"
#include "src/common/progress.h"
#include "src/common/sample_rng.h"
#include "src/common/text.h"
#include "src/config/config_loader.h"
#include "src/distributed/communicator.h"
#include "src/distributed/grad_reducer.h"
#include "src/io/directory_lock.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"
#include "models/mup/parametrization.h"
#include "trainers/checkpoint.h"
#include "trainers/ema.h"
#include "trainers/training_step.h"
#include "trainers/experiment.h"
#include "trainers/log_window.h"
#include "trainers/metrics_sink.h"
#include "trainers/optimizer_state.h"
#include "trainers/resume.h"
#include "trainers/run_directory.h"
#include "models/vae/autoencoder_stage.h"
#include "trainers/sampling.h"
#include "trainers/stop_signal.h"

namespace ditlab {
namespace {

// The parametrization weights were trained under: the model section of the config a ditlab
// .safetensors file embeds (only the keys that set the forward's multipliers, so that files of
// older versions still read). Other files (official checkpoints) are the standard parametrization.
ModelConfig parametrization_of(const std::string& path) {
  ModelConfig model;
  if (!ends_with(path, ".safetensors")) return model;
  const auto metadata = map_safetensors(path).metadata;
  const auto text = metadata.find("config");
  if (text == metadata.end()) return model;
  try {
    const YAML::Node node = YAML::Load(text->second)["model"];
    if (!node) return model;
    model.hidden_size = node["hidden_size"].as<int64_t>(0);
    model.num_heads = node["num_heads"].as<int64_t>(0);
    if (const YAML::Node mup = node["mup"]) {
      model.mup.enabled = mup["enabled"].as<bool>(false);
      model.mup.base_width = mup["base_width"].as<int64_t>(0);
      model.mup.base_num_heads = mup["base_num_heads"].as<int64_t>(0);
      model.mup.output_mult = mup["output_mult"].as<double>(1.0);
      model.mup.attn_mult = mup["attn_mult"].as<double>(0.0);
    }
  } catch (const YAML::Exception& e) {
    throw IoError(path + ": its embedded config is not readable YAML (" + e.what() + ")");
  }
  return model;
}

// Everything one training run holds; run() is the loop.
class Trainer {
 public:
  Trainer(const ExperimentConfig& config, std::shared_ptr<Dataset> dataset, c10::Device device,
          Communicator& communicator, bool resuming)
      : config_(config),
        tc_(config_.train),
        device_(device),
        dataset_(std::move(dataset)),
        autoencoder_(AutoencoderStage::create(config_.autoencoder, device_)),
        step_(config_, build_model(config_, resuming), device_, communicator,
              /*with_ema=*/communicator.is_main(), autoencoder_.get()),
        loader_(dataset_, EpochSampler(dataset_->size(), tc_.global_batch_size,
                                       static_cast<uint64_t>(tc_.seed)),
                config_.data.prefetch, communicator.rank(), communicator.world_size(),
                /*pin_memory=*/device_.is_cuda()),
        communicator_(communicator) {
    if (communicator_.is_main()) metrics_ = std::make_unique<JsonlSink>(config_.run.dir + "/metrics.jsonl");
    int64_t num_params = 0;
    for (auto& p : step_.model().parameters()) num_params += p.numel();
    spdlog::info("model {} ({:.2f}M parameters), data {} ({} images, {} steps/epoch), device {}{}",
                 config_.model.name, num_params / 1e6, config_.data.name, dataset_->size(),
                 loader_.sampler().steps_per_epoch(), device_.str(), step_.bf16() ? ", bf16 autocast" : "");
    if (communicator_.is_main()) {
      peak_tflops_ = tc_.peak_tflops > 0 ? tc_.peak_tflops : default_peak_tflops(device_, step_.bf16());
      if (peak_tflops_ > 0) {
        spdlog::info("MFU against {:.2f} TFLOP/s per device ({})", peak_tflops_,
                     tc_.peak_tflops > 0 ? "train.peak_tflops"
                     : device_.is_cuda() ? "the dense peak of " + device_display_name(device_)
                                         : std::string("the measured float32 matmul rate of this CPU"));
      } else {
        spdlog::info("no MFU: {} has no known peak; set train.peak_tflops", device_display_name(device_));
      }
    }
  }

  // Continues from `c`: weights, EMA, optimizer moments, RNG and the open logging window.
  void restore(const Checkpoint& c) {
    const std::string source = c.dir.empty() ? "checkpoint of step " + std::to_string(c.step) : c.dir;
    load_state_dict(step_.model(), c.model, source + "/model.safetensors");
    if (step_.ema()) load_state_dict(step_.ema()->shadow(), c.ema, source + "/ema.safetensors");
    load_adamw_state(step_.optimizer(), step_.trainable(), c.optimizer, source + "/optimizer.safetensors");
    step_.optimizer_state_changed();
    // A file that verifies but lacks what is read below (written by something else) is refused
    // naming it, not with a bare lookup error.
    const std::string state_file = source + "/trainer_state.safetensors";
    const auto rng = c.trainer_state.find("rng.cpu");
    if (rng == c.trainer_state.end()) throw IoError(state_file + ": no tensor 'rng.cpu'");
    // Every rank loaded the checkpoint rank 0 chose (train()); nothing else to agree on.
    at::Generator cpu_generator = at::detail::getDefaultCPUGenerator();
    cpu_generator.set_state(rng->second);
    try {
      window_.from_tensors(c.trainer_state);
    } catch (const IoError& e) {
      throw IoError(state_file + ": " + e.what());
    }
    // Checkpoints from before the count was saved: a count of 0, as they resumed then.
    const auto bad = c.trainer_state.find("bad_steps");
    bad_steps_ = bad == c.trainer_state.end() ? 0 : bad->second.item<int64_t>();
    start_step_ = c.step;
    spdlog::info("resumed from step {} (epoch {})", c.step, loader_.sampler().epoch_of(c.step));
    if (c.step == tc_.steps) {
      spdlog::info("the run stopped after its last checkpoint: writing its final weights");
    }
  }

  TrainSummary run() {
    TrainSummary summary;
    summary.run_dir = config_.run.dir;
    summary.start_step = summary.steps = start_step_;
    StopSignals signals;
    ProgressBar bar(tc_.steps, "train", start_step_, communicator_.is_main());
    const auto start = std::chrono::steady_clock::now();
    step_.model().train();
    // A step's flags (skipped? stop?) are read while the device runs the next step, so that the
    // host never waits for the device inside a step; where the loop needs them at once (a log
    // line, a checkpoint, a grid, a stop, the end) the step is settled right away.
    // (A step number and a result rather than an optional pair, which GCC 12 wrongly warns
    // may be destroyed uninitialised.)
    int64_t unsettled_step = -1;  // -1: none
    StepResult unsettled;
    auto settle = [&] {
      if (unsettled_step < 0) return;
      update(unsettled_step, unsettled);
      unsettled_step = -1;
      unsettled = StepResult();
    };
    for (int64_t step = start_step_; step < tc_.steps; ++step) {
      StepResult result = step_.run(step, loader_.batch_for_step(step));
      settle();
      unsettled_step = step;
      unsettled = std::move(result);

      const int64_t done = summary.steps = step + 1;
      const bool log_boundary = done % tc_.log_every == 0, last = done == tc_.steps;
      const bool periodic = config_.checkpoint.every > 0 && done % config_.checkpoint.every == 0;
      const bool grid = config_.sample.every > 0 && done % config_.sample.every == 0 && !last;
      if (log_boundary || last || periodic || grid || stop_requested_) settle();
      if (log_boundary) log(done, bar, summary);
      if (periodic || last) save(done);
      // A run ending inside a logging window logs it after the checkpoint, which keeps the window
      // open: a resumed run then logs exactly what one long run would have.
      if (last && !log_boundary) log(done, bar, summary);
      // The last step's grid is samples.png (sample.at_end).
      if (grid) {
        run_on_main_rank(communicator_, device_, "writing the sample grid of step " + std::to_string(done), [&] {
          bar.clear();
          std::filesystem::create_directories(config_.run.dir + "/samples");
          write_sample_grid(config_.run.dir + "/samples/" + step_name(done));
        });
      }
      if (stop_requested_ && !last) {
        if (!periodic) save(done);
        bar.finish();
        const int sig = StopSignals::requested();
        spdlog::warn("stopped by signal {} after step {}; to continue, run the same command with "
                     "--resume auto run.dir={}", sig, done, config_.run.dir);
        summary.stopped_by_signal = sig != 0 ? sig : SIGTERM;  // another rank's signal
        return summary;
      }
      bar.update(done, "loss " + std::to_string(summary.last_loss).substr(0, 6));
    }
    bar.finish();
    summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    spdlog::info("trained steps {}..{} in {}", start_step_ + 1, tc_.steps, format_duration(summary.seconds));
    if (communicator_.distributed() && tc_.steps > start_step_) {
      spdlog::info("gradient all-reduce ({}): {} buckets, {:.1f} MB per step in {}, overlap {}; "
                   "{:.1f} ms per step not hidden by backward", communicator_.backend(),
                   step_.reducer().num_buckets(), step_.reducer().bucket_bytes_on_wire() / 1e6,
                   tc_.grad_reduce_dtype, tc_.grad_reduce_overlap ? "on" : "off",
                   1e3 * step_.reducer().exposed_seconds() / static_cast<double>(tc_.steps - start_step_));
    }
    finish();
    return summary;
  }

 private:
  // The official initialisation from the seed, then train.init_from where set (not when
  // resuming: the checkpoint replaces everything).
  static std::shared_ptr<Backbone> build_model(const ExperimentConfig& config, bool resuming) {
    torch::manual_seed(static_cast<uint64_t>(config.train.seed));
    auto model = build_backbone(config.model);
    const std::string& path = config.train.init_from;
    if (path.empty() || resuming) return model;
    auto weights = read_weights_file(path);
    check_same_forward_multipliers(config.model, parametrization_of(path), "train.init_from " + path);
    auto kept = load_state_dict(*model, weights, "train.init_from " + path, /*allow_missing=*/true);
    std::string examples;
    for (size_t i = 0; i < kept.size() && i < 4; ++i) examples += (i ? ", " : "") + kept[i];
    spdlog::info("initialised from {}: {} tensors loaded; {} model tensors kept their "
                 "initialisation{}{}", path, weights.size(), kept.size(),
                 kept.empty() ? "" : " (", kept.empty() ? "" : examples + (kept.size() > 4 ? ", ...)" : ")"));
    return model;
  }

  // Counts skipped (non-finite) steps; too many in a row stop the run.
  void update(int64_t step, const StepResult& result) {
    stop_requested_ = result.stop_requested();
    if (!result.applied()) {
      spdlog::warn("step {}: non-finite loss or gradient; update skipped ({} in a row)", step + 1,
                   ++bad_steps_);
      if (bad_steps_ >= tc_.max_bad_steps) {
        throw Error("training stopped: " + std::to_string(bad_steps_) + " consecutive steps with a "
                    "non-finite loss or gradient (train.max_bad_steps). The last good checkpoint "
                    "is in " + config_.run.dir + "/checkpoints; lower train.lr or set train.grad_clip");
      }
      return;
    }
    bad_steps_ = 0;
    window_.add(result.loss, result.mse, result.vb, result.grad_norm, tc_.global_batch_size,
                result.extras);
  }

  void log(int64_t done, ProgressBar& bar, TrainSummary& summary) {
    if (window_.empty()) return;
    auto record = window_.record(done, loader_.sampler().epoch_of(done - 1),
                                 learning_rate_at(tc_, done - 1));
    window_ = LogWindow();
    if (!communicator_.is_main()) return;  // the sums agree on every rank; rank 0 reports them
    // Achieved model FLOP/s: 6 x forward MACs per image (forward + backward, 2 FLOPs per MAC)
    // at the window's images/s, over all ranks; MFU against the peak of all devices.
    const double tflops = 6.0 * static_cast<double>(step_.model().training_forward_macs()) * record[8].second / 1e12;
    record.emplace_back("tflops", tflops);
    if (peak_tflops_ > 0) {
      record.emplace_back("mfu", tflops / (peak_tflops_ * communicator_.world_size()));
    }
    metrics_->write(record);
    const double loss = record[2].second;
    if (summary.first_loss == 0.0) summary.first_loss = loss;
    summary.last_loss = loss;
    bar.clear();
    std::string aux;
    for (const auto& [name, value] : record) {
      if (name == "aux_loss") aux = fmt::format("  aux_loss {:.4f}", value);
    }
    spdlog::info("step {}/{}  loss {:.4f}{}  grad_norm {:.3f}  {:.2f} steps/s  {:.0f} img/s", done,
                 tc_.steps, loss, aux, record[5].second, record[7].second, record[8].second);
  }

  // Rank 0 writes the checkpoint (the other ranks hold the same state) while they wait, and
  // they learn at once if it could not, instead of at their next collective's timeout.
  void save(int64_t step) {
    run_on_main_rank(communicator_, device_, "writing the checkpoint of step " + std::to_string(step),
                     [&] { write_checkpoint(step); });
  }

  void write_checkpoint(int64_t step) {
    Checkpoint c;
    c.step = step;
    c.model = state_dict(step_.model());
    c.ema = state_dict(step_.ema()->shadow());
    c.optimizer = adamw_state_tensors(step_.optimizer(), step_.trainable());
    c.trainer_state = window_.to_tensors();
    c.trainer_state["rng.cpu"] = at::detail::getDefaultCPUGenerator().get_state();
    // Skipped steps in a row: a resumed run stops where an uninterrupted one would.
    c.trainer_state["bad_steps"] = at::scalar_tensor(bad_steps_, at::kLong);
    const auto& sampler = loader_.sampler();
    c.trainer_metadata = {{"step", std::to_string(step)},
                          {"epoch", std::to_string(sampler.epoch_of(step))},
                          {"position_in_epoch", std::to_string(step % sampler.steps_per_epoch())},
                          {"dataset_size", std::to_string(dataset_->size())},
                          {"random_streams", kRandomStreams},
                          {"seed", std::to_string(tc_.seed)},
                          {"world_size", std::to_string(communicator_.world_size())},
                          {"libtorch_version", compat::torch_version()}};
    c.config_yaml = to_yaml(config_);
    spdlog::info("checkpoint {}", save_checkpoint(config_.run.dir, c, config_.checkpoint.keep,
                                                  config_.checkpoint.keep_every));
  }

  // The final weights (also in the last checkpoint) for `dit sample`, written by rank 0; every
  // rank fails if they could not be, so no launcher reports a run without them as a success.
  // Then rank 0 alone draws the sample grid: the others do not wait for it (a grid of 1000
  // classes takes longer than train.dist_timeout_s), and its failure is rank 0's.
  void finish() {
    run_on_main_rank(communicator_, device_, "writing the final weights to " + config_.run.dir, [&] {
      const auto metadata = weights_metadata(to_yaml(config_), tc_.steps);
      save_weights(step_.model(), config_.run.dir + "/model.safetensors", metadata);
      save_weights(step_.ema()->shadow(), config_.run.dir + "/ema.safetensors", metadata);
      spdlog::info("saved model.safetensors and ema.safetensors");
    });
    if (communicator_.is_main() && config_.sample.at_end) write_sample_grid(config_.run.dir + "/samples");
  }

  // A grid (one row per class) from the EMA weights at `stem`.png (or .safetensors without
  // OpenCV). Every grid of a run uses the same noise (sample.seed), so grids of successive
  // steps show the model changing, not the noise; sampling draws from generators of its own,
  // so training goes on exactly as without it. Rank 0 only.
  void write_sample_grid(const std::string& stem) {
#ifdef DITLAB_WITH_OPENCV
    const std::string path = stem + ".png";
#else
    const std::string path = stem + ".safetensors";
#endif
    auto labels = grid_labels(config_.model.num_classes, config_.sample.num_per_class);
    auto samples = generate_samples(step_.ema()->shadow(), config_.diffusion, config_.sample, labels, device_,
                                    /*first_index=*/0, autoencoder_.get());
    write_samples(path, samples, labels, config_.sample.num_per_class);
    spdlog::info("wrote {} (EMA weights, {} sampler, {} steps, guidance {})", path,
                 config_.sample.sampler, config_.sample.steps, config_.sample.cfg_scale);
  }

  const ExperimentConfig config_;
  const TrainConfig& tc_;
  const c10::Device device_;
  std::shared_ptr<Dataset> dataset_;
  std::unique_ptr<AutoencoderStage> autoencoder_;  // null: the backbone trains on pixels
  TrainingStep step_;
  PrefetchLoader loader_;
  Communicator& communicator_;
  std::unique_ptr<JsonlSink> metrics_;  // rank 0 only
  LogWindow window_;
  bool stop_requested_ = false;
  int64_t start_step_ = 0;
  int64_t bad_steps_ = 0;
  double peak_tflops_ = 0.0;  // per device; 0: no MFU
};

}  // namespace

TrainSummary train(const ExperimentConfig& input_config, const TrainOptions& options) {
  // Complete the config from the device and the data before anything touches the disk.
  ExperimentConfig config = input_config;
  config.run.dir = expand_run_dir(config.run.dir);
  const RankContext job = join_job(config.train);
  const c10::Device device = job.device;
  Communicator& communicator = *job.communicator;
  if (config.train.grad_reduce_dtype == "bf16" && !communicator.can_sum(at::kBFloat16)) {
    throw ConfigError("train.grad_reduce_dtype bf16: the " + communicator.backend() + " backend of "
                      "this LibTorch (" + compat::torch_version() + ") cannot sum bf16 tensors; "
                      "use fp32 (bf16 is for nccl on GPUs)");
  }
  const int64_t ranks_times_accum = communicator.world_size() * config.train.grad_accum_steps;
  if (config.train.global_batch_size % ranks_times_accum != 0) {
    throw ConfigError("train.global_batch_size " + std::to_string(config.train.global_batch_size) +
                      " is not divisible by " + std::to_string(communicator.world_size()) +
                      " ranks x train.grad_accum_steps " +
                      std::to_string(config.train.grad_accum_steps));
  }
  auto dataset = make_dataset(config.data);
  // The sampler's own check, before anything touches the disk or the model is built.
  EpochSampler(dataset->size(), config.train.global_batch_size, static_cast<uint64_t>(config.train.seed));
  config.model = resolve_model_config(model_config_for_data(config, *dataset));
  if (config.sample.at_end || config.sample.every > 0) {
    check_sample_config(config.model, config.diffusion, config.sample, config.autoencoder);
  }

  // Rank 0 owns the run directory from before anything in it is read until the run ends, so a
  // second process neither resumes from nor clears what the first is writing. The other ranks
  // learn at once if it cannot.
  std::optional<DirectoryLock> run_dir_lock;
  run_on_main_rank(communicator, device, "locking the run directory " + config.run.dir,
                   [&] { run_dir_lock.emplace(config.run.dir, "dit train"); });

  // Rank 0 chooses where the run resumes, or finds it finished, and every other rank loads that
  // same checkpoint: ranks looking on their own could start from different steps (a run.dir
  // local to each node, a checkpoint written between two looks) and train on, silently apart.
  std::optional<Checkpoint> resume_from;
  bool finished = false;
  run_on_main_rank(communicator, device, "finding the checkpoint to resume from in " + config.run.dir, [&] {
    resume_from = find_resume_checkpoint(config, options);
    finished = resume_from && resume_from->step == config.train.steps &&
               run_is_finished(config.run.dir, config.train.steps);
  });
  at::Tensor decision = at::tensor({resume_from ? resume_from->step : int64_t{-1}, int64_t{finished}})
                            .to(device);
  communicator.broadcast({decision});
  decision = decision.cpu();
  const int64_t resume_step = decision[0].item<int64_t>();
  finished = decision[1].item<int64_t>() != 0;
  const std::string chosen = options.resume != "auto" ? options.resume
                            : resume_step >= 0    ? config.run.dir + "/checkpoints/" + step_name(resume_step)
                                                  : std::string();
  run_on_every_rank(communicator, device, "loading the checkpoint rank 0 resumes from, " + chosen, [&] {
    if (communicator.is_main() || resume_step < 0 || finished) return;
    try {
      resume_from = load_checkpoint(chosen);
    } catch (const Error& e) {
      throw IoError("rank " + std::to_string(communicator.rank()) + " cannot read the checkpoint rank 0 "
                    "resumes from (step " + std::to_string(resume_step) + ") at " + chosen + ": " +
                    e.what() + "; run.dir must be a folder every rank sees the same");
    }
  });
  bool other_dataset = false, other_streams = false;
  run_on_every_rank(communicator, device, "checking the dataset against the checkpoint", [&] {
    if (!resume_from || finished) return;
    other_dataset = check_resume_dataset_size(resume_from->trainer_metadata, resume_from->dir,
                                              dataset->size(), options.allow_config_change);
    other_streams = check_resume_random_streams(resume_from->trainer_metadata, resume_from->dir,
                                                options.allow_config_change);
  });
  if (other_streams && communicator.is_main()) {
    spdlog::warn("resuming a checkpoint of other random streams (allowed by --allow-config-change): "
                 "the run's choices change from here on");
  }
  if (other_dataset && communicator.is_main()) {
    spdlog::warn("resuming on a dataset of another size (allowed by --allow-config-change): {} items now",
                 dataset->size());
  }
  if (finished) {
    // --resume auto of a finished run (a re-queued job, say): nothing to do, nothing touched
    // but the lock file.
    if (communicator.is_main()) {
      spdlog::info("{} is finished (step {}); raise train.steps to train longer", config.run.dir,
                   config.train.steps);
    }
    TrainSummary summary;
    summary.run_dir = config.run.dir;
    summary.start_step = summary.steps = config.train.steps;
    return summary;
  }
  run_on_main_rank(communicator, device, "preparing the run directory " + config.run.dir, [&] {
    prepare_run_directory(config, options, resume_from);
    log::add_file_sink(config.run.dir + "/train.log");
    write_run_metadata(config.run.dir, config, options.command_line, device);
    if (communicator.distributed()) {
      spdlog::info("{} {} ({}, {}), rendezvous at {}:{}", communicator.world_size(),
                   communicator.world_size() == 1 ? "rank" : "ranks", communicator.env().launcher, communicator.backend(), communicator.env().master_addr,
                   communicator.env().master_port);
    }
  });

  Trainer trainer(config, dataset, device, communicator, resume_from.has_value());
  if (resume_from) trainer.restore(*resume_from);
  resume_from.reset();  // free the host copy of the checkpoint
  TrainSummary summary = trainer.run();
  spdlog::default_logger()->flush();  // train.log is complete when train() returns
  return summary;
}

}  // namespace ditlab
