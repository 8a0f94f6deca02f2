#include "trainers/latent_encoder.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <filesystem>
#include <map>
#include <optional>

#include "data/dataset.h"
#include "data/latent_cache.h"
#include "models/vae/autoencoder_stage.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/progress.h"
#include "src/common/sample_rng.h"
#include "src/distributed/communicator.h"
#include "src/io/checksum.h"
#include "src/io/directory_lock.h"
#include "src/io/safetensors.h"
#include "trainers/experiment.h"

namespace ditlab {
namespace {

using Clock = std::chrono::steady_clock;

// The posterior draws of --store sample: a stream of their own, apart from training's.
at::Generator encoding_generator(int64_t seed, int64_t orientation, int64_t index) {
  return sample_generator(static_cast<uint64_t>(seed), kEncodingStream - static_cast<uint64_t>(orientation),
                          static_cast<uint64_t>(index));
}

// A CRC-32 of the first and last 8 images and their labels, so that another dataset of the same
// name and size is not taken for this one when resuming.
uint32_t sample_checksum(const Dataset& data) {
  std::vector<int64_t> indices;
  for (int64_t i = 0; i < std::min<int64_t>(8, data.size()); ++i) indices.push_back(i);
  for (int64_t i = std::max<int64_t>(8, data.size() - 8); i < data.size(); ++i) indices.push_back(i);
  const Batch batch = data.get_batch(indices);
  const at::Tensor images = batch.images.contiguous(), labels = batch.labels.contiguous();
  std::string bytes(static_cast<const char*>(images.data_ptr()), static_cast<size_t>(images.nbytes()));
  bytes.append(static_cast<const char*>(labels.data_ptr()), static_cast<size_t>(labels.nbytes()));
  return crc32_of(bytes);
}

void check_options(const EncodeOptions& o) {
  if (o.out_dir.empty()) throw UsageError("dit encode needs --out DIR");
  if (o.store != "moments" && o.store != "sample") {
    throw UsageError("--store '" + o.store + "' is unknown; expected moments or sample");
  }
  if (o.dtype != "float32" && o.dtype != "float16" && o.dtype != "bfloat16") {
    throw UsageError("--dtype '" + o.dtype + "' is unknown; expected float32, float16 or bfloat16");
  }
  if (o.shard_size <= 0) throw UsageError("--shard-size must be positive, got " + std::to_string(o.shard_size));
  if (o.batch_size <= 0) throw UsageError("--batch must be positive, got " + std::to_string(o.batch_size));
}

at::ScalarType storage_type(const std::string& dtype) {
  return dtype == "float16" ? at::kHalf : dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
}

// What the cache will hold, from the data, the autoencoder and the options.
LatentCacheManifest planned_manifest(const ExperimentConfig& config, const Dataset& data,
                                     const AutoencoderStage& stage, const EncodeOptions& o) {
  const LatentShape latent = latent_shape(config.autoencoder, data.channels());
  const int64_t side = latent_side(data.image_size(), latent);
  LatentCacheManifest m;
  m.count = data.size();
  m.shard_size = o.shard_size;
  m.num_classes = data.num_classes();
  m.latent_shape = {latent.channels, side, side};
  m.dtype = o.dtype;
  m.store = o.store;
  m.orientations = o.flip ? 2 : 1;
  m.seed = o.store == "sample" ? o.seed : 0;  // moments draw nothing
  m.source = {config.data.name, config.data.path, config.data.split, data.image_size(),
              config.data.limit, data.channels(), sample_checksum(data)};
  if (!std::isfinite(stage.scaling_factor()) || stage.scaling_factor() <= 0) {
    throw ConfigError("the autoencoder's scaling factor must be a positive number, not " +
                      std::to_string(stage.scaling_factor()));
  }
  m.autoencoder.weights = config.autoencoder.weights;
  m.autoencoder.crc32 = crc32_of_file(config.autoencoder.weights);
  m.autoencoder.bytes = static_cast<int64_t>(std::filesystem::file_size(config.autoencoder.weights));
  m.autoencoder.latent_channels = latent.channels;
  m.autoencoder.downsampling = latent.downsampling;
  m.autoencoder.scaling_factor = stage.scaling_factor();
  m.command = o.command_line;
  return m;
}

// A shard already on disk that belongs to this cache and whose data is intact; anything else
// is encoded again.
bool shard_is_done(const std::string& dir, const LatentCacheManifest& m, int64_t shard) {
  const std::string path = dir + "/" + LatentCacheManifest::shard_file(shard);
  if (!std::filesystem::exists(path)) return false;
  try {
    open_latent_shard(dir, m, shard, /*verify_data=*/true);
    return true;
  } catch (const IoError& e) {
    spdlog::warn("{}; encoding it again", e.what());
  } catch (const c10::Error& e) {
    spdlog::warn("{}: {}; encoding it again", path, e.what_without_backtrace());
  }
  return false;
}

// The entries of images [first, first + n): [n, orientations, parts, C, h, w] in the stored dtype.
void encode_shard(const Dataset& data, const AutoencoderStage& stage, const LatentCacheManifest& m,
                  const EncodeOptions& o, const std::string& dir, int64_t shard,
                  const c10::Device& device, const std::function<void(int64_t)>& on_images) {
  const int64_t first = shard * m.shard_size;
  const int64_t n = std::min(m.shard_size, m.count - first);
  at::Tensor latents = at::empty({n, m.orientations, m.parts(), m.latent_shape[0], m.latent_shape[1],
                                  m.latent_shape[2]},
                                 at::TensorOptions().dtype(storage_type(m.dtype)));
  at::Tensor labels = at::empty({n}, at::kLong);
  for (int64_t b = 0; b < n; b += o.batch_size) {
    const int64_t count = std::min(o.batch_size, n - b);
    std::vector<int64_t> indices(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) indices[static_cast<size_t>(i)] = first + b + i;
    const Batch batch = data.get_batch(indices);
    const at::Tensor images = batch.images.to(device);
    for (int64_t orientation = 0; orientation < m.orientations; ++orientation) {
      const DiagonalGaussian p = stage.posterior(orientation == 1 ? images.flip({3}) : images);
      at::Tensor entry;
      if (m.store == "moments") {
        entry = at::stack({p.mean, p.std()}, 1);
      } else {  // one draw per (seed, orientation, image), whatever the sharding or rank
        std::vector<at::Tensor> noise;
        for (int64_t index : indices) {
          noise.push_back(at::randn(m.latent_shape, encoding_generator(m.seed, orientation, index)));
        }
        entry = (p.mean + p.std() * at::stack(noise).to(device)).unsqueeze(1);
      }
      latents.narrow(0, b, count).select(1, orientation).copy_(entry.to(at::kCPU));
    }
    labels.narrow(0, b, count).copy_(batch.labels);
    on_images(count);
  }
  auto metadata = latent_shard_metadata(m, latents, labels);
  metadata["first"] = std::to_string(first);
  metadata["count"] = std::to_string(n);
  write_safetensors(dir + "/" + LatentCacheManifest::shard_file(shard),
                    {{"latents", latents}, {"labels", labels}}, metadata);
}

}  // namespace

EncodeSummary encode_dataset(const ExperimentConfig& config, const EncodeOptions& o) {
  check_options(o);
  const auto start = Clock::now();
  if (config.autoencoder.type != "kl") {
    throw ConfigError("dit encode needs an autoencoder: autoencoder.type kl and autoencoder.weights "
                      "(from dit train-vae, or diffusers' sd-vae-ft-ema/mse)");
  }
  const RankContext job = join_job(config.train);
  const c10::Device device = job.device;
  Communicator& communicator = *job.communicator;

  auto data = make_dataset(config.data);
  if (data->latent_cache() != nullptr) {
    throw ConfigError("dit encode encodes images, but data.name is latents (" + config.data.path + ")");
  }
  auto stage = AutoencoderStage::create(config.autoencoder, device);
  const LatentCacheManifest manifest = planned_manifest(config, *data, *stage, o);
  const std::string& dir = o.out_dir;

  std::optional<DirectoryLock> cache_lock;  // rank 0 owns the cache until it is complete
  run_on_main_rank(communicator, device, "preparing " + dir, [&] {
    cache_lock.emplace(dir, "dit encode");
    if (std::filesystem::exists(manifest_path(dir))) {
      require_same_settings(dir, read_latent_manifest(dir), manifest);
      spdlog::info("{} exists with the same settings: resuming", dir);
    } else {
      std::filesystem::create_directories(dir);
    }
    write_latent_manifest(dir, manifest);  // complete: false until every shard is checked
    write_run_metadata(dir, config, o.command_line, device);
    spdlog::info("encoding {} images ({}x{} px, {} orientation{}) into {} shards of {}: {} {} latents "
                 "[{}, {}, {}] on {}, {} rank{}",
                 manifest.count, manifest.source.image_size, manifest.source.image_size,
                 manifest.orientations, manifest.orientations > 1 ? "s" : "", manifest.num_shards(),
                 manifest.shard_size, manifest.dtype, manifest.store, manifest.latent_shape[0],
                 manifest.latent_shape[1], manifest.latent_shape[2], device.str(),
                 communicator.world_size(), communicator.world_size() > 1 ? "s" : "");
  });  // the manifest exists before any shard is written

  // Rounds of one shard per rank, each ending in a barrier: no rank waits longer than one shard.
  const int world = communicator.world_size(), rank = communicator.rank();
  const int64_t shards = manifest.num_shards();
  int64_t my_images = 0;
  for (int64_t s = rank; s < shards; s += world) my_images += std::min(manifest.shard_size, manifest.count - s * manifest.shard_size);
  ProgressBar bar(my_images, "encode", 0, communicator.is_main());
  EncodeSummary summary;
  summary.count = manifest.count;
  int64_t done = 0, encoded_images = 0;
  double encode_seconds = 0.0;
  for (int64_t round = 0; round * world < shards; ++round) {
    const int64_t shard = round * world + rank;
    if (shard < shards) {
      const int64_t n = std::min(manifest.shard_size, manifest.count - shard * manifest.shard_size);
      if (shard_is_done(dir, manifest, shard)) {
        ++summary.shards_kept;
        done += n;
        bar.update(done, "kept " + LatentCacheManifest::shard_file(shard));
      } else {
        const auto shard_start = Clock::now();
        encode_shard(*data, *stage, manifest, o, dir, shard, device, [&](int64_t images) {
          done += images;
          bar.update(done);
        });
        encode_seconds += std::chrono::duration<double>(Clock::now() - shard_start).count();
        encoded_images += n;
        ++summary.shards_encoded;
        bar.clear();
        spdlog::info("shard {}/{}: {} images, {:.1f} images/s", shard + 1, shards, n,
                     encoded_images / std::max(encode_seconds, 1e-9));
      }
    }
    communicator.barrier();
  }
  bar.finish();

  // Every shard, its data included, is checked before the cache says complete: each rank reads
  // its own shards back, so the others wait a share of the reading, not all of it (84 GB for
  // ImageNet with flips, longer than train.dist_timeout_s on one rank).
  run_on_every_rank(communicator, device, "checking the shards of " + dir, [&] {
    for (int64_t s = rank; s < shards; s += world) open_latent_shard(dir, manifest, s, /*verify_data=*/true);
  });
  run_on_main_rank(communicator, device, "completing the manifest of " + dir, [&] {
    LatentCacheManifest finished = manifest;
    finished.complete = true;
    write_latent_manifest(dir, finished);
  });
  summary.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  summary.images_per_s = encoded_images / std::max(encode_seconds, 1e-9);
  spdlog::info("{}: {} images, {} shards encoded and {} kept by rank {}, {:.1f} s", dir, summary.count,
               summary.shards_encoded, summary.shards_kept, rank, summary.seconds);
  return summary;
}

}  // namespace ditlab
