#include "trainers/classifier_trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "data/dataset.h"
#include "data/held_out_split.h"
#include "models/classifier/image_classifier.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/progress.h"
#include "src/io/directory_lock.h"
#include "trainers/experiment.h"
#include "trainers/step_means.h"

namespace ditlab {

ClassifierTrainSummary train_classifier(const ExperimentConfig& config, const std::string& command_line) {
  const auto& cc = config.classifier;
  const auto start = std::chrono::steady_clock::now();
  apply_compute_settings(config.train);
  auto data = make_dataset(config.data);
  if (data->latent_cache() != nullptr) {
    throw ConfigError("dit train-classifier trains on images, but data.name is latents (" + config.data.path + ")");
  }
  const int64_t held_out = cc.eval_images, trainable = data->size() - held_out;
  if (trainable < cc.batch_size) {
    throw ConfigError("classifier.eval_images " + std::to_string(held_out) + " leaves " +
                      std::to_string(trainable) + " of the dataset's " + std::to_string(data->size()) +
                      " images for training, fewer than classifier.batch_size " + std::to_string(cc.batch_size));
  }
  // Held out: an even stride over the dataset; the rest trains.
  const HeldOutSplit split = even_held_out_split(data->size(), held_out);
  const std::vector<int64_t>& held_out_indices = split.held_out;
  const std::vector<int64_t>& training_indices = split.training;
  ImageClassifierOptions options;
  options.in_channels = data->channels();
  options.num_classes = data->num_classes();
  options.image_size = data->image_size();
  options.channels = cc.channels;
  const std::string run_dir = expand_run_dir(config.run.dir);
  const std::string weights_path = run_dir + "/classifier.safetensors";
  const DirectoryLock run_dir_lock(run_dir, "dit train-classifier");  // held until training ends
  if (std::filesystem::exists(weights_path)) {
    throw ConfigError("run.dir " + run_dir + " already holds a classifier; choose another run.dir");
  }
  torch::manual_seed(static_cast<uint64_t>(config.train.seed));
  ImageClassifier model(options);  // checks the architecture before anything is written
  std::filesystem::create_directories(run_dir);
  log::add_file_sink(run_dir + "/train.log");
  const c10::Device device = select_device(config.train.device);
  write_run_metadata(run_dir, config, command_line, device);
  model->to(device);
  int64_t parameters = 0;
  for (const auto& p : model->parameters()) parameters += p.numel();
  spdlog::info("classifier: stages {}, {}-d features, {:.2f}M parameters; {} training and {} held-out "
               "images, {} classes; {} steps of {}", options.channels.size(), options.feature_dim(),
               parameters / 1e6, trainable, held_out, options.num_classes, cc.steps, cc.batch_size);

  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(cc.lr).weight_decay(1e-4));
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(config.train.seed));
  StepMeans window(config.train.log_every, cc.steps);
  ClassifierTrainSummary summary;
  summary.weights_path = weights_path;
  ProgressBar bar(cc.steps, "train-classifier", 0, log::stderr_is_terminal());
  model->train();
  for (int64_t step = 0; step < cc.steps; ++step) {
    // Cosine decay from lr to 0 over the run.
    const double lr = 0.5 * cc.lr * (1.0 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(cc.steps)));
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    const at::Tensor drawn = at::randint(trainable, {cc.batch_size}, generator, at::kLong);
    std::vector<int64_t> picked;
    for (int64_t i = 0; i < cc.batch_size; ++i) picked.push_back(training_indices[drawn[i].item<int64_t>()]);
    const Batch batch = data->get_batch(picked);
    at::Tensor x = batch.images;
    if (config.data.random_flip) {
      const at::Tensor flip = at::rand({cc.batch_size}, generator) < 0.5;
      x = at::where(flip.view({-1, 1, 1, 1}), x.flip({3}), x);
    }
    const at::Tensor labels = batch.labels.to(device);
    const at::Tensor logits = model->forward(x.to(device));
    const at::Tensor loss = at::cross_entropy_loss(logits, labels);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (window.add(step, {loss, (logits.argmax(1) == labels).to(at::kDouble).mean()})) {
      const auto means = window.take();  // cross-entropy, accuracy
      if (summary.first_loss == 0.0) summary.first_loss = means[0];
      summary.last_loss = means[0];
      bar.clear();
      spdlog::info("step {}/{}  cross-entropy {:.4f}  train accuracy {:.3f}  lr {:.2e}", step + 1, cc.steps,
                   means[0], means[1], lr);
    }
    bar.update(step + 1);
  }
  bar.finish();

  model->eval();
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  for (int64_t first = 0; first < held_out; first += cc.batch_size) {
    const std::vector<int64_t> indices(held_out_indices.begin() + first,
                                       held_out_indices.begin() + std::min(first + cc.batch_size, held_out));
    const Batch batch = data->get_batch(indices);
    correct += (model->forward(batch.images.to(device)).argmax(1).cpu() == batch.labels).sum().item<int64_t>();
  }
  summary.held_out_accuracy = static_cast<double>(correct) / static_cast<double>(held_out);
  model->to(at::kCPU);
  char accuracy[32];
  std::snprintf(accuracy, sizeof(accuracy), "%.6f", summary.held_out_accuracy);
  save_classifier(model, weights_path,
                  {{"held_out_accuracy", accuracy}, {"held_out_images", std::to_string(held_out)},
                   {"dataset", config.data.name + ":" + config.data.split}});
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("held-out accuracy {:.4f} on {} images; wrote {} ({:.0f} s)", summary.held_out_accuracy, held_out,
               weights_path, summary.seconds);
  return summary;
}

}  // namespace ditlab
