#include "data/latent_cache.h"

#include <ATen/ATen.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "src/common/error.h"
#include "src/common/text.h"
#include "src/io/atomic_file.h"
#include "src/io/checksum.h"
#include "src/io/safetensors.h"

namespace ditlab {
namespace {

constexpr const char* kFormat = "ditlab-latent-cache";
constexpr int kVersion = 1;
// The largest count and shard_size a manifest may give: far beyond any dataset, and small enough
// that count + shard_size and shard * shard_size cannot overflow int64.
constexpr int64_t kMaxEntries = int64_t{1} << 40;

std::string json_number(double value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", value);
  return buf;
}

std::string json_list(const std::vector<int64_t>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

at::ScalarType scalar_type_of(const std::string& dtype) {
  if (dtype == "float32") return at::kFloat;
  if (dtype == "float16") return at::kHalf;
  if (dtype == "bfloat16") return at::kBFloat16;
  throw ConfigError("latent cache dtype '" + dtype + "' is unknown; expected float32, float16 or bfloat16");
}

// The value at a key of the manifest, "name" or "group.name"; IoError naming the key otherwise.
template <typename T>
T manifest_value(const YAML::Node& root, const std::string& key, const std::string& file) {
  const auto dot = key.find('.');
  const YAML::Node group = dot == std::string::npos ? root : root[key.substr(0, dot)];
  const YAML::Node node = group.IsMap() ? group[dot == std::string::npos ? key : key.substr(dot + 1)]
                                        : YAML::Node();
  if (!node.IsDefined() || node.IsNull()) throw IoError(file + ": key '" + key + "' is missing");
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    throw IoError(file + ": key '" + key + "' has a malformed value");
  }
}

}  // namespace

std::string LatentCacheManifest::shard_file(int64_t shard) {
  char name[64];
  std::snprintf(name, sizeof(name), "shard-%05lld.safetensors", static_cast<long long>(shard));
  return name;
}

std::vector<std::pair<std::string, std::string>> LatentCacheManifest::settings(bool comparable) const {
  std::vector<std::pair<std::string, std::string>> s = {
      {"count", std::to_string(count)},
      {"shard_size", std::to_string(shard_size)},
      {"num_classes", std::to_string(num_classes)},
      {"latent_shape", json_list(latent_shape)},
      {"dtype", json_quoted(dtype)},
      {"store", json_quoted(store)},
      {"orientations", std::to_string(orientations)},
      {"seed", std::to_string(seed)},
      {"source.name", json_quoted(source.name)},
      {"source.path", json_quoted(source.path)},
      {"source.split", json_quoted(source.split)},
      {"source.image_size", std::to_string(source.image_size)},
      {"source.limit", std::to_string(source.limit)},
      {"source.channels", std::to_string(source.channels)},
      {"source.sample_crc32", std::to_string(source.sample_crc32)},
      {"autoencoder.weights", json_quoted(autoencoder.weights)},
      {"autoencoder.crc32", std::to_string(autoencoder.crc32)},
      {"autoencoder.bytes", std::to_string(autoencoder.bytes)},
      {"autoencoder.latent_channels", std::to_string(autoencoder.latent_channels)},
      {"autoencoder.downsampling", std::to_string(autoencoder.downsampling)},
      {"autoencoder.scaling_factor", json_number(autoencoder.scaling_factor)},
  };
  if (comparable) {
    std::vector<std::pair<std::string, std::string>> kept;
    for (auto& kv : s) {
      if (kv.first != "source.path" && kv.first != "autoencoder.weights" && kv.first != "source.limit" &&
          kv.first != "autoencoder.scaling_factor") {
        kept.push_back(kv);
      }
    }
    return kept;
  }
  return s;
}

std::string LatentCacheManifest::fingerprint() const {
  std::string text;
  for (const auto& [key, value] : settings(true)) text += key + "=" + value + "\n";
  char hex[16];
  std::snprintf(hex, sizeof(hex), "%08x", crc32_of(text));
  return hex;
}

std::string manifest_path(const std::string& cache_dir) { return cache_dir + "/manifest.json"; }

void write_latent_manifest(const std::string& cache_dir, const LatentCacheManifest& m) {
  // Settings with a dotted key go into a nested object ("source": {...}), in order.
  std::string json = "{\n  \"format\": " + json_quoted(kFormat) + ",\n  \"version\": " +
                     std::to_string(kVersion) + ",\n  \"complete\": " + (m.complete ? "true" : "false") +
                     ",\n  \"command\": " + json_quoted(m.command);
  std::string open_group;
  for (const auto& [key, value] : m.settings()) {
    const auto dot = key.find('.');
    const std::string group = dot == std::string::npos ? "" : key.substr(0, dot);
    const std::string name = dot == std::string::npos ? key : key.substr(dot + 1);
    if (group != open_group) {
      if (!open_group.empty()) json += "\n  }";
      if (!group.empty()) json += ",\n  " + json_quoted(group) + ": {";
      open_group = group;
      json += group.empty() ? ",\n  " : "\n    ";
    } else {
      json += group.empty() ? ",\n  " : ",\n    ";
    }
    json += json_quoted(name) + ": " + value;
  }
  if (!open_group.empty()) json += "\n  }";
  json += "\n}\n";
  write_file_atomically(manifest_path(cache_dir), json);
}

LatentCacheManifest read_latent_manifest(const std::string& cache_dir) {
  const std::string file = manifest_path(cache_dir);
  if (!std::filesystem::exists(file)) {
    throw IoError(cache_dir + " is not a latent cache: " + file + " is missing (make one with dit encode)");
  }
  YAML::Node root;
  try {
    root = YAML::Load(read_file(file));
  } catch (const YAML::Exception& e) {
    throw IoError(file + ": not valid JSON: " + e.what());
  }
  if (!root.IsMap() || !root["format"] || root["format"].as<std::string>("") != kFormat) {
    throw IoError(file + ": not a ditlab latent cache manifest (\"format\" is not \"" + kFormat + "\")");
  }
  if (manifest_value<int>(root, "version", file) != kVersion) {
    throw IoError(file + ": manifest version " + root["version"].as<std::string>() +
                  " is not supported (expected " + std::to_string(kVersion) + ")");
  }
  auto get = [&](const std::string& key, auto& field) {
    field = manifest_value<std::decay_t<decltype(field)>>(root, key, file);
  };
  LatentCacheManifest m;
  get("complete", m.complete);
  get("command", m.command);
  get("count", m.count);
  get("shard_size", m.shard_size);
  get("num_classes", m.num_classes);
  get("latent_shape", m.latent_shape);
  get("dtype", m.dtype);
  get("store", m.store);
  get("orientations", m.orientations);
  get("seed", m.seed);
  get("source.name", m.source.name);
  get("source.path", m.source.path);
  get("source.split", m.source.split);
  get("source.image_size", m.source.image_size);
  get("source.limit", m.source.limit);
  get("source.channels", m.source.channels);
  get("source.sample_crc32", m.source.sample_crc32);
  get("autoencoder.weights", m.autoencoder.weights);
  get("autoencoder.crc32", m.autoencoder.crc32);
  get("autoencoder.bytes", m.autoencoder.bytes);
  get("autoencoder.latent_channels", m.autoencoder.latent_channels);
  get("autoencoder.downsampling", m.autoencoder.downsampling);
  get("autoencoder.scaling_factor", m.autoencoder.scaling_factor);
  auto bad = [&](const std::string& what) { return IoError(file + ": " + what); };
  auto check_entries = [&](const std::string& key, int64_t value) {
    if (value < 1 || value > kMaxEntries) {
      throw bad("key '" + key + "' is " + std::to_string(value) + ", expected 1 to 2^40");
    }
  };
  check_entries("count", m.count);
  check_entries("shard_size", m.shard_size);
  if (m.latent_shape.size() != 3) throw bad("latent_shape must be [channels, height, width]");
  if (m.store != "moments" && m.store != "sample") throw bad("store must be moments or sample");
  if (m.orientations != 1 && m.orientations != 2) throw bad("orientations must be 1 or 2");
  if (m.num_classes <= 0) throw bad("num_classes must be positive");
  if (!std::isfinite(m.autoencoder.scaling_factor)) throw bad("autoencoder.scaling_factor must be finite");
  try {
    scalar_type_of(m.dtype);
  } catch (const ConfigError& e) {
    throw bad(e.what());
  }
  return m;
}

void require_same_settings(const std::string& cache_dir, const LatentCacheManifest& existing,
                           const LatentCacheManifest& wanted) {
  const auto a = existing.settings(true), b = wanted.settings(true);
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].second != b[i].second) {
      throw ConfigError(manifest_path(cache_dir) + " was made with " + a[i].first + " = " +
                        a[i].second + ", but this run has " + b[i].second +
                        "; use another --out, or remove the folder to encode it anew");
    }
  }
}

namespace {
uint32_t crc32_of_tensor(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return crc32_of(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel() * c.element_size()));
}
}  // namespace

std::map<std::string, std::string> latent_shard_metadata(const LatentCacheManifest& m,
                                                         const at::Tensor& latents,
                                                         const at::Tensor& labels) {
  return {{"fingerprint", m.fingerprint()},
          {"latents_crc32", std::to_string(crc32_of_tensor(latents))},
          {"labels_crc32", std::to_string(crc32_of_tensor(labels))}};
}

LatentShard open_latent_shard(const std::string& cache_dir, const LatentCacheManifest& m, int64_t shard,
                              bool verify_data) {
  const std::string path = cache_dir + "/" + LatentCacheManifest::shard_file(shard);
  if (!std::filesystem::exists(path)) throw IoError(path + " is missing: the latent cache is incomplete");
  SafetensorsFile file = map_safetensors(path);
  auto bad = [&](const std::string& what) { return IoError(path + ": " + what); };
  auto meta = file.metadata.find("fingerprint");
  if (meta == file.metadata.end() || meta->second != m.fingerprint()) {
    throw bad("belongs to another latent cache (its fingerprint is not the manifest's " +
              m.fingerprint() + ")");
  }
  const int64_t n = std::min(m.shard_size, m.count - shard * m.shard_size);
  const std::vector<int64_t> shape = {n, m.orientations, m.parts(), m.latent_shape[0],
                                      m.latent_shape[1], m.latent_shape[2]};
  LatentShard s;
  for (const char* name : {"latents", "labels"}) {
    if (file.tensors.count(name) == 0) throw bad(std::string("has no tensor '") + name + "'");
  }
  s.latents = file.tensors.at("latents");
  s.labels = file.tensors.at("labels");
  if (s.latents.sizes() != at::IntArrayRef(shape) || s.latents.scalar_type() != scalar_type_of(m.dtype)) {
    std::ostringstream msg;
    msg << "latents are " << s.latents.scalar_type() << " " << s.latents.sizes() << ", expected "
        << m.dtype << " " << at::IntArrayRef(shape);
    throw bad(msg.str());
  }
  if (s.labels.sizes() != at::IntArrayRef({n}) || s.labels.scalar_type() != at::kLong) {
    throw bad("labels must be int64 [" + std::to_string(n) + "]");
  }
  if (verify_data) {
    auto crc = file.metadata.find("latents_crc32");
    if (crc == file.metadata.end() || crc->second != std::to_string(crc32_of_tensor(s.latents))) {
      throw bad("its latents do not match their stored checksum (the file is corrupt)");
    }
    // Caches written before labels had a checksum lack it; their labels are range-checked below.
    crc = file.metadata.find("labels_crc32");
    if (crc != file.metadata.end() && crc->second != std::to_string(crc32_of_tensor(s.labels))) {
      throw bad("its labels do not match their stored checksum (the file is corrupt)");
    }
  }
  // A label num_classes would train as the null (unconditional) class, a larger one indexes past
  // the class embedding: both are refused here, which reads n * 8 bytes of the shard.
  const int64_t* labels = s.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (labels[i] < 0 || labels[i] >= m.num_classes) {
      throw bad("label " + std::to_string(labels[i]) + " of entry " + std::to_string(i) +
                " is outside [0, " + std::to_string(m.num_classes) + ") (num_classes in the manifest)");
    }
  }
  return s;
}

LatentCache::LatentCache(const std::string& dir, int64_t limit)
    : dir_(dir), manifest_(read_latent_manifest(dir)) {
  if (!manifest_.complete) {
    throw IoError(manifest_path(dir) + ": the cache is incomplete (dit encode was interrupted); "
                  "run the same dit encode again to finish it");
  }
  size_ = limit > 0 ? std::min(limit, manifest_.count) : manifest_.count;
  const int64_t used_shards = (size_ + manifest_.shard_size - 1) / manifest_.shard_size;
  for (int64_t s = 0; s < used_shards; ++s) shards_.push_back(open_latent_shard(dir, manifest_, s));
}

Batch LatentCache::get_batch(const std::vector<int64_t>& indices) const {
  const int64_t n = static_cast<int64_t>(indices.size());
  std::vector<int64_t> shape = {n, manifest_.orientations, manifest_.parts()};
  shape.insert(shape.end(), manifest_.latent_shape.begin(), manifest_.latent_shape.end());
  Batch batch;
  batch.cached_latents = at::empty(shape, at::kFloat);
  batch.labels = at::empty({n}, at::kLong);
  auto* labels = batch.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t index = indices[static_cast<size_t>(i)];
    if (index < 0 || index >= size_) {
      throw IoError(dir_ + ": index " + std::to_string(index) + " outside the cache's " +
                    std::to_string(size_) + " entries");
    }
    const LatentShard& shard = shards_[static_cast<size_t>(index / manifest_.shard_size)];
    const int64_t row = index % manifest_.shard_size;
    batch.cached_latents[i].copy_(shard.latents[row]);  // converts float16 / bfloat16
    labels[i] = shard.labels.data_ptr<int64_t>()[row];
  }
  return batch;
}

}  // namespace ditlab
