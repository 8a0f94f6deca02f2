#include "trainers/evaluation.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "data/dataset.h"
#include "data/latent_cache.h"
#include "models/classifier/feature_network.h"
#include "models/registry.h"
#include "models/vae/autoencoder_stage.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/progress.h"
#include "src/common/text.h"
#include "src/distributed/communicator.h"
#include "src/io/atomic_file.h"
#include "src/io/checksum.h"
#include "src/io/directory_lock.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"
#include "src/metrics/frechet_distance.h"
#include "src/metrics/inception_score.h"
#include "src/metrics/precision_recall.h"
#include "trainers/checkpoint.h"
#include "trainers/experiment.h"
#include "trainers/sampling.h"

namespace ditlab {
namespace {

using Clock = std::chrono::steady_clock;

// The images the reference statistics describe: data.*, or the source of a latent cache.
DataConfig reference_data(const DataConfig& data) {
  if (data.name != "latents") return data;
  const LatentCacheManifest m = read_latent_manifest(data.path);
  DataConfig source;
  source.name = m.source.name;
  source.path = m.source.path;
  source.split = m.source.split;
  source.image_size = m.source.image_size;
  source.limit = m.source.limit;
  return source;
}

// Fills rows of `total` [n, D] (zero elsewhere) on every rank, then sums over ranks: each row is
// written by exactly one rank, so the sum gathers them.
at::Tensor gather_rows(Communicator& communicator, at::Tensor rows, const c10::Device& device) {
  at::Tensor on_device = rows.to(device);
  communicator.all_reduce_sum(on_device);
  return on_device.cpu();
}

// Every rank must measure at least one batch (so that all agree on the feature sizes).
void require_batch_per_rank(int64_t batches, const Communicator& communicator, const std::string& what) {
  if (batches < communicator.world_size()) {
    throw ConfigError("eval.batch_size splits " + what + " into " + std::to_string(batches) + " batches, fewer than the " +
                      std::to_string(communicator.world_size()) + " ranks; lower eval.batch_size");
  }
}

struct Reference {
  FeatureStatistics statistics;
  at::Tensor features;  // real points for precision and recall: an even spread of the reference images
};

// The features of the images `indices` of `data`, batch b on rank b % world, on every rank.
at::Tensor measure_images(const Dataset& data, const std::vector<int64_t>& indices, FeatureNetwork& network,
                          int64_t batch, Communicator& communicator, const c10::Device& device,
                          const std::string& what) {
  const int64_t n = static_cast<int64_t>(indices.size()), batches = (n + batch - 1) / batch;
  require_batch_per_rank(batches, communicator, what);
  at::Tensor features;
  ProgressBar bar(batches, "reference", 0, communicator.is_main());
  for (int64_t b = communicator.rank(); b < batches; b += communicator.world_size()) {
    const int64_t first = b * batch, rows = std::min(batch, n - first);
    const std::vector<int64_t> part(indices.begin() + first, indices.begin() + first + rows);
    const at::Tensor f = network.measure(data.get_batch(part).images).features;
    if (!features.defined()) features = at::zeros({n, f.size(1)});
    features.narrow(0, first, rows).copy_(f);
    bar.update(b + 1);
  }
  bar.finish();
  return gather_rows(communicator, features, device);
}

// Real-data statistics, cached under the network's identity and the data's description; the
// real points for precision and recall are cached beside them, one set per eval.num_samples.
Reference reference_statistics(const ExperimentConfig& config, FeatureNetwork& network, Communicator& communicator,
                               const c10::Device& device) {
  const DataConfig data_config = reference_data(config.data);
  auto data = make_dataset(data_config);
  // Even spreads over the dataset (position i of n taken from the N images is floor(i * N / n)):
  // image folders are sorted by class, so the first images would cover only the first classes.
  // The statistics take `count` images; the real points are `kept` of those `count`, spread
  // evenly again, so that they too cover every class and depend on nothing but
  // (count, eval.num_samples), not on which evaluations ran before.
  const int64_t count = config.eval.reference_images > 0 ? std::min(config.eval.reference_images, data->size())
                                                         : data->size();
  const int64_t kept = std::min(count, config.eval.num_samples);
  auto image_index = [&](int64_t i) { return i * data->size() / count; };
  auto real_point_position = [&](int64_t j) { return j * count / kept; };
  const std::string description = data_config.name + "|" + data_config.path + "|" + data_config.split + "|" +
                                  std::to_string(data_config.image_size) + "|" + std::to_string(data_config.limit) +
                                  "|" + std::to_string(count) + "|even";
  char key[16];
  std::snprintf(key, sizeof(key), "%08x", crc32_of(description));
  const std::string path = config.eval.reference_dir + "/" + network.identity() + "-" + data_config.name + "-" +
                           key + ".safetensors";
  const std::string features_name = "features." + std::to_string(kept);
  const std::map<std::string, std::string> metadata = {
      {"images", std::to_string(count)}, {"data", description}, {"network", network.identity()}};
  // Rank 0 decides whether the cache is there, so that every rank takes the same path.
  at::Tensor cached = at::full({1}, communicator.is_main() && std::filesystem::exists(path) ? 1.0f : 0.0f,
                               at::TensorOptions().device(device));
  communicator.all_reduce_sum(cached);
  if (cached.item<float>() > 0) {
    SafetensorsFile file = read_safetensors(path);
    for (const char* name : {"mean", "covariance"}) {
      if (file.tensors.count(name) == 0) throw IoError(path + ": no tensor '" + name + "'; delete it to recompute");
    }
    Reference r;
    r.statistics = {file.tensors.at("mean"), file.tensors.at("covariance"), count};
    spdlog::info("reference statistics of {} images from {}", count, path);
    auto stored = file.tensors.find(features_name);
    if (stored != file.tensors.end()) {
      r.features = stored->second;
      return r;
    }
    // Another eval.num_samples: measure only its real points, and keep them in the cache too.
    std::vector<int64_t> indices;
    for (int64_t j = 0; j < kept; ++j) indices.push_back(image_index(real_point_position(j)));
    r.features = measure_images(*data, indices, network, config.eval.batch_size, communicator, device,
                                "the reference images");
    run_on_main_rank(communicator, device, "writing " + path, [&] {
      file.tensors[features_name] = r.features;
      write_safetensors(path, file.tensors, metadata);
    });
    return r;
  }
  spdlog::info("reference statistics of {} {} images ({}) -> {}", count, data_config.name, data_config.path, path);
  const int64_t batch = config.eval.batch_size, batches = (count + batch - 1) / batch;
  require_batch_per_rank(batches, communicator, "the reference images");
  FeatureMoments moments;
  at::Tensor features;
  ProgressBar bar(batches, "reference", 0, communicator.is_main());
  for (int64_t b = communicator.rank(); b < batches; b += communicator.world_size()) {
    std::vector<int64_t> indices;
    for (int64_t i = b * batch; i < std::min(count, (b + 1) * batch); ++i) indices.push_back(image_index(i));
    const at::Tensor f = network.measure(data->get_batch(indices).images).features;
    moments.add(f);
    if (!features.defined()) features = at::zeros({kept, f.size(1)});
    for (int64_t i = b * batch; i < b * batch + f.size(0); ++i) {
      // Position i is real point j when j = ceil(i * kept / count) maps back onto it.
      const int64_t j = (i * kept + count - 1) / count;
      if (j < kept && real_point_position(j) == i) features[j].copy_(f[i - b * batch]);
    }
    bar.update(b + 1);
  }
  bar.finish();
  at::Tensor counts = at::tensor({static_cast<double>(moments.count)}, at::kDouble);
  moments.sum = gather_rows(communicator, moments.sum, device);
  moments.outer = gather_rows(communicator, moments.outer, device);
  moments.count = static_cast<int64_t>(gather_rows(communicator, counts, device).item<double>());
  Reference r;
  r.statistics = moments.statistics();
  r.features = gather_rows(communicator, features, device);
  run_on_main_rank(communicator, device, "writing " + path, [&] {
    std::filesystem::create_directories(config.eval.reference_dir);
    write_safetensors(path, {{"mean", r.statistics.mean}, {"covariance", r.statistics.covariance},
                             {features_name, r.features}},
                      metadata);
  });
  return r;
}

std::string json_value(double v) {
  if (std::isnan(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

}  // namespace

EvalResult evaluate_run(const ExperimentConfig& input, const EvalOptions& options) {
  const auto start = Clock::now();
  ExperimentConfig config = input;
  const EvalConfig& ec = config.eval;
  if (options.weights != "ema" && options.weights != "model") {
    throw UsageError("--weights must be ema or model, got '" + options.weights + "'");
  }
  const bool of_checkpoint = options.checkpoint_step >= 0;
  const std::string weights =
      (of_checkpoint ? options.run_dir + "/checkpoints/" + step_name(options.checkpoint_step) : options.run_dir) +
      "/" + options.weights + ".safetensors";
  if (!std::filesystem::exists(weights)) {
    throw IoError(weights + (of_checkpoint ? " does not exist: --checkpoint takes the step of a checkpoint the run "
                                             "kept (see checkpoint.keep and checkpoint.keep_every)"
                                           : " does not exist: dit eval needs a finished run (or one exported "
                                             "by a checkpoint)"));
  }
  const RankContext job = join_job(config.train);
  const c10::Device device = job.device;
  Communicator& communicator = *job.communicator;
  // Rank 0 holds the run directory while it reads the weights and writes eval.json: not while a
  // dit train (training it longer) or another dit eval uses it.
  std::optional<DirectoryLock> run_dir_lock;
  run_on_main_rank(communicator, device, "locking the run directory " + options.run_dir,
                   [&] { run_dir_lock.emplace(options.run_dir, "dit eval"); });
  check_sample_config(config.model, config.diffusion, config.sample, config.autoencoder);
  if (ec.num_samples <= ec.nearest_k) {
    throw ConfigError("eval.num_samples " + std::to_string(ec.num_samples) + " must exceed eval.nearest_k " +
                      std::to_string(ec.nearest_k) + " (precision and recall need k neighbours)");
  }

  auto network = make_feature_network(ec, device);
  auto model = build_backbone(config.model);
  const auto metadata = load_weights(*model, weights);
  model->to(device);
  auto autoencoder = AutoencoderStage::create(config.autoencoder, device);

  EvalResult result;
  result.num_samples = ec.num_samples;
  auto step = metadata.find("step");
  try {
    result.step = step == metadata.end() ? 0 : std::stoll(step->second);
  } catch (const std::exception&) {
    throw IoError(weights + ": the metadata's step '" + step->second + "' is not a number");
  }
  result.gmacs_per_image = static_cast<double>(model->forward_macs()) / 1e9;
  result.training_flops = 6.0 * static_cast<double>(model->training_forward_macs()) * static_cast<double>(result.step) *
                          static_cast<double>(config.train.global_batch_size);

  const Reference reference = reference_statistics(config, *network, communicator, device);
  result.reference_images = reference.statistics.count;

  // Samples, classes in turn; batch b on rank b % world. Sample i's noise is its own stream
  // (sample.seed, i), so the images do not depend on eval.batch_size or the number of ranks.
  const int64_t n = ec.num_samples, batch = ec.batch_size, batches = (n + batch - 1) / batch;
  const int64_t classes = config.model.num_classes;
  const at::Tensor labels = at::arange(n, at::kLong) % classes;
  require_batch_per_rank(batches, communicator, "eval.num_samples");
  spdlog::info("sampling {} images ({} {} steps, guidance {}) from {} on {} rank{}", n, config.sample.steps,
               config.sample.sampler, config.sample.cfg_scale, weights, communicator.world_size(),
               communicator.world_size() > 1 ? "s" : "");
  at::Tensor features, probabilities;
  ProgressBar bar(batches, "eval", 0, communicator.is_main());
  const auto sampling_start = Clock::now();
  for (int64_t b = communicator.rank(); b < batches; b += communicator.world_size()) {
    const int64_t first = b * batch, rows = std::min(batch, n - first);
    at::Tensor images =
        generate_samples(*model, config.diffusion, config.sample, labels.narrow(0, first, rows), device, first,
                         autoencoder.get());
    const ImageFeatures measured = network->measure(images.clamp(-1, 1));
    if (!features.defined()) features = at::zeros({n, measured.features.size(1)});
    features.narrow(0, first, rows).copy_(measured.features);
    if (measured.probabilities.defined()) {
      if (!probabilities.defined()) probabilities = at::zeros({n, measured.probabilities.size(1)});
      probabilities.narrow(0, first, rows).copy_(measured.probabilities);
    }
    bar.update(b + 1);
    if (!log::stderr_is_terminal() && communicator.is_main()) {
      spdlog::info("batch {}/{} ({:.1f} images/s)", b + 1, batches,
                   static_cast<double>((b + 1) * batch) /
                       std::chrono::duration<double>(Clock::now() - sampling_start).count());
    }
  }
  bar.finish();
  features = gather_rows(communicator, features, device);
  if (probabilities.defined()) probabilities = gather_rows(communicator, probabilities, device);

  // Every rank computes the metrics from the same gathered features (on the device), so no rank
  // waits on another while the distances are computed; rank 0 writes them.
  {
    result.fid = frechet_distance(feature_statistics(features), reference.statistics);
    const PrecisionRecall pr = precision_recall(reference.features.to(device), features.to(device), ec.nearest_k);
    result.precision = pr.precision;
    result.recall = pr.recall;
    if (probabilities.defined()) {
      const InceptionScore is = inception_score(probabilities, std::min(ec.is_splits, n));
      result.inception_score = is.mean;
      result.inception_score_std = is.std;
      if (ec.features == "classifier" && probabilities.size(1) == classes) {
        result.accuracy = (probabilities.argmax(1) == labels).to(at::kDouble).mean().item<double>();
      }
    }
    result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    result.json = "{\"run_dir\": " + json_quoted(options.run_dir) + ", \"weights\": " + json_quoted(options.weights) +
                  ", \"step\": " + std::to_string(result.step) + ", \"checkpoint\": " +
                  (of_checkpoint ? "true" : "false") + ", \"features\": " + json_quoted(network->identity()) +
                  ", \"num_samples\": " + std::to_string(n) + ", \"reference_images\": " +
                  std::to_string(result.reference_images) + ", \"sampler\": " + json_quoted(config.sample.sampler) +
                  ", \"sample_steps\": " + std::to_string(config.sample.steps) + ", \"cfg_scale\": " +
                  json_value(config.sample.cfg_scale) + ", \"fid\": " + json_value(result.fid) + ", \"precision\": " +
                  json_value(result.precision) + ", \"recall\": " + json_value(result.recall) +
                  ", \"inception_score\": " + json_value(result.inception_score) + ", \"inception_score_std\": " +
                  json_value(result.inception_score_std) + ", \"accuracy\": " + json_value(result.accuracy) +
                  ", \"gmacs_per_image\": " + json_value(result.gmacs_per_image) + ", \"training_flops\": " +
                  json_value(result.training_flops) + ", \"seconds\": " + json_value(result.seconds) +
                  ", \"command\": " + json_quoted(options.command_line) + "}";
  }
  const std::string written = options.run_dir + (of_checkpoint ? "/evals.jsonl" : "/eval.json");
  run_on_main_rank(communicator, device, "writing " + written, [&] {
    if (!of_checkpoint) write_file_atomically(options.run_dir + "/eval.json", result.json + "\n");
    std::ofstream history(options.run_dir + "/evals.jsonl", std::ios::app);
    history << result.json << "\n";
    if (!history.flush()) throw IoError("cannot append to " + options.run_dir + "/evals.jsonl");
    spdlog::info("step {}: FID {:.3f}  precision {:.3f}  recall {:.3f}  IS {}  accuracy {}  ({} samples, {:.0f} s) -> {}",
                 result.step, result.fid, result.precision, result.recall, json_value(result.inception_score),
                 json_value(result.accuracy), n, result.seconds, written);
  });
  return result;
}

}  // namespace ditlab
