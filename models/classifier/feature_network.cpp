#include "models/classifier/feature_network.h"

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/script.h>

#include <cstdio>

#include "models/classifier/image_classifier.h"
#include "src/common/error.h"
#include "src/io/checksum.h"

namespace ditlab {
namespace {

std::string file_identity(const std::string& kind, const std::string& path) {
  char crc[16];
  std::snprintf(crc, sizeof(crc), "%08x", crc32_of_file(path));
  return kind + "-" + crc;
}

class ClassifierFeatures : public FeatureNetwork {
 public:
  ClassifierFeatures(const std::string& path, const c10::Device& device)
      : model_(load_classifier(path)), device_(device), identity_(file_identity("classifier", path)) {
    model_->to(device);
  }

  ImageFeatures measure(const at::Tensor& images) override {
    torch::NoGradGuard no_grad;
    const auto& o = model_->options();
    if (images.size(1) != o.in_channels || images.size(2) != o.image_size) {
      throw ShapeError("the classifier takes " + std::to_string(o.in_channels) + "x" + std::to_string(o.image_size) +
                       "x" + std::to_string(o.image_size) + " images, got " + std::to_string(images.size(1)) + "x" +
                       std::to_string(images.size(2)) + "x" + std::to_string(images.size(3)));
    }
    // Real images are 8-bit; samples are quantised to the same 256 levels (as DiT's
    // sample_ddp.py saves them as uint8 before its evaluator), so both are measured alike.
    const at::Tensor x = images.to(device_, at::kFloat).add(1).mul_(127.5).round_().clamp_(0, 255).div_(127.5).sub_(1);
    const at::Tensor features = model_->features(x);
    ImageFeatures out;
    out.features = features.cpu();
    out.probabilities = at::softmax(model_->classify(features), 1).cpu();
    return out;
  }
  std::string identity() const override { return identity_; }

 private:
  ImageClassifier model_;
  c10::Device device_;
  std::string identity_;
};

class TorchScriptInception : public FeatureNetwork {
 public:
  TorchScriptInception(const std::string& path, const c10::Device& device)
      : device_(device), identity_(file_identity("inception", path)) {
    try {
      module_ = torch::jit::load(path, device);
    } catch (const c10::Error& e) {
      throw IoError("cannot load the TorchScript network " + path + ": " + e.what_without_backtrace());
    }
    module_.eval();
    try {
      for (const auto& argument : module_.get_method("forward").function().getSchema().arguments()) {
        if (argument.name() == "return_features") takes_return_features_ = true;
        if (argument.name() == "no_output_bias") takes_no_output_bias_ = true;
      }
    } catch (const c10::Error& e) {
      throw IoError("the TorchScript network " + path + " has no usable forward method: " + e.what_without_backtrace());
    }
  }

  ImageFeatures measure(const at::Tensor& images) override {
    torch::NoGradGuard no_grad;
    at::Tensor x = images.to(device_, at::kFloat);
    if (x.size(1) == 1) x = x.repeat({1, 3, 1, 1});
    // [-1, 1] -> uint8 0..255, the input the network was exported for.
    x = ((x + 1) * 127.5).round().clamp(0, 255).to(at::kByte);
    ImageFeatures out;
    try {
      if (takes_return_features_) {
        out.features = module_.forward({x}, {{"return_features", true}}).toTensor().to(at::kFloat).cpu();
        // The Inception Score leaves out the logits' bias, as the TensorFlow original and
        // StyleGAN2-ADA / EDM do (no_output_bias=True), where the network offers it.
        torch::jit::Kwargs kwargs = {{"return_features", false}};
        if (takes_no_output_bias_) kwargs["no_output_bias"] = true;
        out.probabilities = module_.forward({x}, kwargs).toTensor().to(at::kFloat).cpu();
      } else {
        out.features = module_.forward({x}).toTensor().to(at::kFloat).cpu();
      }
    } catch (const c10::Error& e) {
      throw ShapeError("the TorchScript network failed on images of shape [" + std::to_string(x.size(0)) + ", 3, " +
                       std::to_string(x.size(2)) + ", " + std::to_string(x.size(3)) + "]: " + e.what_without_backtrace());
    }
    if (out.features.dim() != 2) out.features = out.features.flatten(1);
    return out;
  }
  std::string identity() const override { return identity_; }

 private:
  torch::jit::Module module_;
  c10::Device device_;
  std::string identity_;
  bool takes_return_features_ = false;
  bool takes_no_output_bias_ = false;
};

}  // namespace

std::unique_ptr<FeatureNetwork> make_feature_network(const EvalConfig& eval, const c10::Device& device) {
  if (eval.features == "classifier") {
    if (eval.classifier.empty()) {
      throw ConfigError("eval.features classifier needs eval.classifier: the weights of dit train-classifier "
                        "(e.g. runs/classifier-fashion_mnist/classifier.safetensors)");
    }
    return std::make_unique<ClassifierFeatures>(eval.classifier, device);
  }
  if (eval.features == "inception") {
    if (eval.inception.empty()) {
      throw ConfigError("eval.features inception needs eval.inception: a TorchScript Inception file "
                        "(e.g. inception-2015-12-05.pt)");
    }
    return std::make_unique<TorchScriptInception>(eval.inception, device);
  }
  throw ConfigError("eval.features '" + eval.features + "' is unknown; expected classifier or inception");
}

}  // namespace ditlab
