// A small convolutional image classifier, the feature network of `dit eval` on datasets without
// an Inception network (Fashion-MNIST). Stages of two 3x3 convolutions (GroupNorm, SiLU) and 2x
// average pooling, then global average pooling: the penultimate features, and a linear head.
// Images in [-1, 1], any size the pooling divides.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ditlab {

struct ImageClassifierOptions {
  int64_t in_channels = 1;
  int64_t num_classes = 10;
  int64_t image_size = 32;
  std::vector<int64_t> channels = {32, 64, 128};
  int64_t feature_dim() const { return channels.back(); }
};

class ImageClassifierImpl : public torch::nn::Module {
 public:
  explicit ImageClassifierImpl(ImageClassifierOptions options);
  at::Tensor features(const at::Tensor& images);           // [N, feature_dim]
  at::Tensor forward(const at::Tensor& images);            // logits [N, num_classes]
  at::Tensor classify(const at::Tensor& features);         // the head alone: features -> logits
  const ImageClassifierOptions& options() const { return options_; }

 private:
  ImageClassifierOptions options_;
  torch::nn::Sequential body{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(ImageClassifier);

// Weights with the architecture in the metadata ("classifier_config" JSON), so a file is
// self-describing; `extra` metadata (e.g. the held-out accuracy) is stored beside it.
void save_classifier(ImageClassifier& model, const std::string& path,
                     const std::map<std::string, std::string>& extra = {});
// Builds the classifier of `path` and loads it strictly, in eval mode without gradients.
// Throws IoError / ShapeError naming the file and the key.
ImageClassifier load_classifier(const std::string& path);

}  // namespace ditlab
