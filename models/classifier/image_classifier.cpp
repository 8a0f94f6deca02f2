#include "models/classifier/image_classifier.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/modules/pooling.h>
#include <yaml-cpp/yaml.h>

#include <numeric>

#include "src/common/error.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"

namespace ditlab {
namespace {

// 3x3 convolution, GroupNorm (up to 8 groups), SiLU, appended to `body`.
void add_conv_norm_act(torch::nn::Sequential& body, int64_t in, int64_t out) {
  body->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1)));
  body->push_back(torch::nn::GroupNorm(torch::nn::GroupNormOptions(std::gcd<int64_t>(8, out), out)));
  body->push_back(torch::nn::SiLU());
}

std::string config_json(const ImageClassifierOptions& o) {
  std::string channels;
  for (size_t i = 0; i < o.channels.size(); ++i) channels += (i ? ", " : "") + std::to_string(o.channels[i]);
  return "{\"in_channels\": " + std::to_string(o.in_channels) + ", \"num_classes\": " +
         std::to_string(o.num_classes) + ", \"image_size\": " + std::to_string(o.image_size) +
         ", \"channels\": [" + channels + "]}";
}

}  // namespace

ImageClassifierImpl::ImageClassifierImpl(ImageClassifierOptions options) : options_(std::move(options)) {
  if (options_.channels.empty()) throw ConfigError("classifier.channels must name at least one stage");
  const int64_t pooling = int64_t{1} << (options_.channels.size() - 1);
  if (options_.image_size % pooling != 0) {
    throw ConfigError("the classifier's " + std::to_string(options_.channels.size()) + " stages halve the size " +
                      std::to_string(options_.channels.size() - 1) + " times, which " +
                      std::to_string(options_.image_size) + " does not allow");
  }
  body = torch::nn::Sequential();
  int64_t in = options_.in_channels;
  for (size_t s = 0; s < options_.channels.size(); ++s) {
    const int64_t out = options_.channels[s];
    add_conv_norm_act(body, in, out);
    add_conv_norm_act(body, out, out);
    if (s + 1 < options_.channels.size()) body->push_back(torch::nn::AvgPool2d(2));
    in = out;
  }
  register_module("body", body);
  head = register_module("head", torch::nn::Linear(in, options_.num_classes));
}

at::Tensor ImageClassifierImpl::features(const at::Tensor& images) {
  return body->forward(images).mean({2, 3});
}

at::Tensor ImageClassifierImpl::forward(const at::Tensor& images) { return classify(features(images)); }

at::Tensor ImageClassifierImpl::classify(const at::Tensor& features) { return head->forward(features); }

void save_classifier(ImageClassifier& model, const std::string& path,
                     const std::map<std::string, std::string>& extra) {
  auto metadata = extra;
  metadata["classifier_config"] = config_json(model->options());
  write_safetensors(path, state_dict(*model), metadata);
}

ImageClassifier load_classifier(const std::string& path) {
  const SafetensorsFile file = map_safetensors(path);
  auto it = file.metadata.find("classifier_config");
  if (it == file.metadata.end()) {
    throw IoError(path + ": not a classifier from dit train-classifier (no \"classifier_config\" metadata)");
  }
  ImageClassifierOptions o;
  try {
    const YAML::Node c = YAML::Load(it->second);
    o.in_channels = c["in_channels"].as<int64_t>();
    o.num_classes = c["num_classes"].as<int64_t>();
    o.image_size = c["image_size"].as<int64_t>();
    o.channels = c["channels"].as<std::vector<int64_t>>();
  } catch (const YAML::Exception& e) {
    throw IoError(path + ": malformed classifier_config metadata: " + e.what());
  }
  ImageClassifier model(o);
  load_state_dict(*model, file.tensors, path);
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  return model;
}

}  // namespace ditlab
