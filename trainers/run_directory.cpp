#include "trainers/run_directory.h"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "src/common/error.h"
#include "src/config/config_loader.h"
#include "src/io/atomic_file.h"
#include "src/io/safetensors.h"
#include "trainers/resume.h"

namespace ditlab {
namespace fs = std::filesystem;

namespace {

// Drops the metrics records that the resumed run will log again: those after `step`, and the
// record of a partial window that a run ending at `step` logged.
void truncate_metrics(const std::string& path, int64_t step, int64_t log_every) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    // A line cut short by a kill (no closing brace) is dropped with the others.
    auto at = line.find("\"step\": ");
    if (at == std::string::npos || line.empty() || line.back() != '}') continue;
    int64_t s = std::strtoll(line.c_str() + at + 8, nullptr, 10);
    if (s < step || (s == step && step % log_every == 0)) kept += line + "\n";
  }
  write_file_atomically(path, kept);
}

bool holds_a_run(const std::string& dir) {
  return fs::exists(fs::path(dir) / "metrics.jsonl") || !list_checkpoints(dir).empty();
}

}  // namespace

std::optional<Checkpoint> find_resume_checkpoint(const ExperimentConfig& config,
                                                 const TrainOptions& options) {
  std::optional<Checkpoint> found;
  const std::string& dir = config.run.dir;
  if (options.resume == "auto") {
    found = load_latest_complete(dir, [](const std::string& skipped, const std::string& why) {
      spdlog::warn("skipping checkpoint {}: {}", skipped, why);
    });
    if (!found && !list_checkpoints(dir).empty()) {
      throw IoError("no checkpoint in " + dir + "/checkpoints verifies (see the warnings above); "
                    "nothing was changed. Remove the run directory to start over");
    }
  } else if (!options.resume.empty()) {
    found = load_checkpoint(options.resume);
    std::error_code ec;  // the checkpoint's own run directory is run.dir itself
    const bool own = fs::equivalent(fs::weakly_canonical(options.resume).parent_path().parent_path(),
                                    dir, ec);
    if (!own && holds_a_run(dir)) {
      throw ConfigError("run directory '" + dir + "' holds another run; resume " + options.resume +
                        " into a new run.dir");
    }
  }
  if (!found) return found;
  ExperimentConfig saved;
  apply_yaml_text(saved, found->config_yaml, "checkpoint config.yaml");
  for (const auto& key : check_resume_config(saved, config, options.allow_config_change)) {
    spdlog::warn("resuming with a changed {} (allowed by --allow-config-change)", key);
  }
  // A checkpoint at the last step resumes only to write what a kill after it prevented (the
  // final weights), or, with --resume auto, to find the run finished (train() then does nothing,
  // so that a re-queued job of a finished run succeeds). Asked explicitly, it is an error.
  const bool finished = run_is_finished(dir, config.train.steps);
  const bool nothing_to_do = found->step == config.train.steps && finished && options.resume != "auto";
  if (found->step > config.train.steps || nothing_to_do) {
    throw ConfigError("the checkpoint is at step " + std::to_string(found->step) +
                      ", train.steps is " + std::to_string(config.train.steps) +
                      "; raise train.steps to train longer");
  }
  return found;
}

bool run_is_finished(const std::string& dir, int64_t steps) {
  // Both final files, each written at `steps`: a run trained longer keeps the shorter run's
  // files until its own end, and a kill between the two writes leaves them at different steps.
  for (const char* name : {"model.safetensors", "ema.safetensors"}) {
    const fs::path path = fs::path(dir) / name;
    if (!fs::exists(path)) return false;
    try {
      const auto metadata = map_safetensors(path.string()).metadata;
      const auto step = metadata.find("step");
      if (step == metadata.end() || step->second != std::to_string(steps)) return false;
    } catch (const Error&) {
      return false;  // unreadable (cut short by a kill): not finished, the resume rewrites it
    }
  }
  return true;
}

void prepare_run_directory(const ExperimentConfig& config, const TrainOptions& options,
                           const std::optional<Checkpoint>& resume_from) {
  const std::string& dir = config.run.dir;
  if (resume_from) {
    fs::create_directories(dir);
    set_aside_checkpoints_after(dir, resume_from->step);
    ExperimentConfig saved;
    apply_yaml_text(saved, resume_from->config_yaml, "checkpoint config.yaml");
    truncate_metrics(dir + "/metrics.jsonl", resume_from->step, saved.train.log_every);
    return;
  }
  const bool auto_resume = options.resume == "auto";
  if (auto_resume) spdlog::info("no checkpoint in {}: starting fresh", dir);
  for (const char* file : {"metrics.jsonl", "model.safetensors", "ema.safetensors", "checkpoints"}) {
    if (!fs::exists(fs::path(dir) / file)) continue;
    if (!auto_resume) {
      throw ConfigError("run directory '" + dir + "' already holds a run (" + file +
                        "); continue it with --resume auto, choose another run.dir (e.g. "
                        "run.dir=runs/{time}) or remove it");
    }
    // --resume auto without any checkpoint: a run killed before its first one.
    fs::remove_all(fs::path(dir) / file);
  }
  fs::create_directories(dir);
}

}  // namespace ditlab
