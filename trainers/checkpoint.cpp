#include "trainers/checkpoint.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fcntl.h>
#include <unistd.h>

#include "src/common/error.h"
#include "src/common/text.h"
#include "src/io/atomic_file.h"
#include "src/io/checksum.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"

namespace ditlab {
namespace fs = std::filesystem;

namespace {

constexpr const char* kManifest = "manifest.json";
const std::vector<std::string> kFiles = {"model.safetensors", "ema.safetensors",
                                         "optimizer.safetensors", "trainer_state.safetensors",
                                         "config.yaml"};

// The step of a complete checkpoint directory name ("step-00000100"), or -1.
int64_t step_of(const std::string& name) {
  if (name.size() < 13 || name.size() > 23 || name.rfind("step-", 0) != 0) return -1;
  if (!std::all_of(name.begin() + 5, name.end(), ::isdigit)) return -1;
  return std::stoll(name.substr(5));
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) throw IoError("cannot open folder '" + dir + "' to sync it");
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw IoError("cannot sync folder '" + dir + "' (disk full or failing?)");
}

// Deleting a folder file by file is not atomic: a kill in the middle would leave a folder with
// its manifest but not all its files. So it is first renamed out of the listing (atomic), then
// removed; leftovers of interrupted deletions are removed on the next call.
void remove_checkpoint_dir(const std::string& dir) {
  std::error_code ec;
  const std::string doomed = dir + ".deleting";
  fs::remove_all(doomed, ec);
  fs::rename(dir, doomed, ec);
  fs::remove_all(ec ? dir : doomed, ec);
}

void prune(const std::string& run_dir, int64_t keep, int64_t keep_every) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::path(run_dir) / "checkpoints", ec)) {
    const std::string name = entry.path().filename().string();
    if (ends_with(name, ".deleting")) {
      fs::remove_all(entry.path(), ec);
    }
  }
  if (keep <= 0) return;
  auto complete = list_checkpoints(run_dir);  // newest first
  for (size_t i = static_cast<size_t>(keep); i < complete.size(); ++i) {
    int64_t step = step_of(fs::path(complete[i]).filename().string());
    if (keep_every > 0 && step % keep_every == 0) continue;
    remove_checkpoint_dir(complete[i]);
  }
}

}  // namespace

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08ld", static_cast<long>(step));
  return name;
}

std::string save_checkpoint(const std::string& run_dir, const Checkpoint& c, int64_t keep,
                            int64_t keep_every) {
  const std::string root = run_dir + "/checkpoints";
  const std::string final_dir = root + "/" + step_name(c.step);
  const std::string tmp_dir = final_dir + ".partial";
  try {
    fs::create_directories(root);
    fs::remove_all(tmp_dir);  // a leftover of a write that was interrupted
    fs::create_directories(tmp_dir);
  } catch (const fs::filesystem_error& e) {
    throw IoError("cannot create checkpoint folder '" + tmp_dir + "': " + e.what());
  }
  const auto weight_meta = weights_metadata(c.config_yaml, c.step);
  write_safetensors(tmp_dir + "/model.safetensors", c.model, weight_meta);
  write_safetensors(tmp_dir + "/ema.safetensors", c.ema, weight_meta);
  write_safetensors(tmp_dir + "/optimizer.safetensors", c.optimizer);
  write_safetensors(tmp_dir + "/trainer_state.safetensors", c.trainer_state, c.trainer_metadata);
  write_file_atomically(tmp_dir + "/config.yaml", c.config_yaml);

  std::string manifest = "{\"step\": " + std::to_string(c.step) + ", \"files\": {";
  for (size_t i = 0; i < kFiles.size(); ++i) {
    std::string bytes = read_file(tmp_dir + "/" + kFiles[i]);
    manifest += (i ? ", \"" : "\"") + kFiles[i] + "\": {\"bytes\": " + std::to_string(bytes.size()) +
                ", \"crc32\": " + std::to_string(crc32_of(bytes)) + "}";
  }
  manifest += "}}\n";
  write_file_atomically(tmp_dir + "/" + kManifest, manifest);
  fsync_dir(tmp_dir);

  // Replacing a checkpoint of the same step (a resumed run passing it again) is the only case
  // where a complete directory is removed before its successor is in place.
  if (fs::exists(final_dir)) remove_checkpoint_dir(final_dir);
  if (::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
    throw IoError("cannot rename '" + tmp_dir + "' to '" + final_dir + "'");
  }
  fsync_dir(root);
  write_file_atomically(root + "/latest", step_name(c.step) + "\n");
  prune(run_dir, keep, keep_every);
  return final_dir;
}

Checkpoint load_checkpoint(const std::string& dir) {
  const std::string manifest_path = dir + "/" + kManifest;
  if (!fs::is_directory(dir)) throw IoError("checkpoint folder not found: '" + dir + "'");
  if (!fs::exists(manifest_path)) {
    throw IoError(dir + ": no manifest.json (an incomplete checkpoint)");
  }
  YAML::Node manifest;
  try {
    manifest = YAML::Load(read_file(manifest_path));
  } catch (const YAML::Exception& e) {
    throw IoError(manifest_path + ": not valid JSON: " + e.what());
  }
  Checkpoint c;
  try {
    c.step = manifest["step"].as<int64_t>();
    for (const auto& name : kFiles) {
      const YAML::Node entry = manifest["files"][name];
      if (!entry) throw IoError(manifest_path + ": does not list " + name);
      const std::string path = dir + "/" + name;
      if (!fs::exists(path)) throw IoError(path + ": missing (listed in the manifest)");
      std::string bytes = read_file(path);
      if (bytes.size() != entry["bytes"].as<uint64_t>()) {
        throw IoError(path + ": " + std::to_string(bytes.size()) + " bytes, the manifest says " +
                      std::to_string(entry["bytes"].as<uint64_t>()) + " (truncated or replaced)");
      }
      if (crc32_of(bytes) != entry["crc32"].as<uint32_t>()) {
        throw IoError(path + ": checksum mismatch (the file is corrupt)");
      }
    }
  } catch (const YAML::Exception& e) {
    throw IoError(manifest_path + ": malformed manifest: " + e.what());
  }
  c.model = read_safetensors(dir + "/model.safetensors").tensors;
  c.ema = read_safetensors(dir + "/ema.safetensors").tensors;
  c.optimizer = read_safetensors(dir + "/optimizer.safetensors").tensors;
  auto state = read_safetensors(dir + "/trainer_state.safetensors");
  c.trainer_state = std::move(state.tensors);
  c.trainer_metadata = std::move(state.metadata);
  c.config_yaml = read_file(dir + "/config.yaml");
  c.dir = dir;
  return c;
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(root)) return {};
  for (const auto& entry : fs::directory_iterator(root)) {
    int64_t step = step_of(entry.path().filename().string());
    if (step >= 0 && entry.is_directory() && fs::exists(entry.path() / kManifest)) {
      found.emplace_back(step, entry.path().string());
    }
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> dirs;
  for (auto& [step, dir] : found) dirs.push_back(std::move(dir));
  return dirs;
}

void set_aside_checkpoints_after(const std::string& run_dir, int64_t step) {
  for (const auto& dir : list_checkpoints(run_dir)) {
    if (step_of(fs::path(dir).filename().string()) <= step) continue;
    std::string aside = dir + ".stale";
    std::error_code ec;
    fs::remove_all(aside, ec);
    fs::rename(dir, aside, ec);
    // Left in place, it would outrank the resumed branch: its pruning would delete the new
    // checkpoints first, and a later --resume auto would go back to this one.
    if (ec) {
      throw IoError("cannot set " + dir + " aside (to " + aside + ") before resuming from step " +
                    std::to_string(step) + ": " + ec.message() + "; move or remove it by hand");
    }
  }
}

std::optional<Checkpoint> load_latest_complete(
    const std::string& run_dir,
    const std::function<void(const std::string&, const std::string&)>& on_skip) {
  // Newest step first. `latest` names the same directory after every successful save; it is
  // not trusted here because a kill between the rename and its update leaves it one behind.
  for (const auto& dir : list_checkpoints(run_dir)) {
    try {
      return load_checkpoint(dir);
    } catch (const Error& e) {
      if (on_skip) on_skip(dir, e.what());
    }
  }
  return std::nullopt;
}

}  // namespace ditlab
