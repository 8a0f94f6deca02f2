// The networks `dit eval` measures images with: features for the Fréchet distance and precision /
// recall, and class probabilities for the Inception Score and the accuracy of class-conditional
// samples.
//   classifier  the CNN of dit train-classifier (models/classifier/image_classifier.h)
//   inception   a TorchScript Inception network from a file the user provides, called as
//               NVIDIA's inception-2015-12-05.pt (StyleGAN2-ADA, EDM) is: forward(images uint8
//               [N, 3, H, W] in 0..255, return_features=True) -> pool3 features [N, 2048], and
//               with return_features=False (and no_output_bias=True, as the Inception Score
//               there is computed) -> class probabilities. A network whose forward takes only
//               the images gives features alone.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>

#include "src/config/experiment_config.h"

namespace ditlab {

struct ImageFeatures {
  at::Tensor features;       // [N, D] float32 on the CPU
  at::Tensor probabilities;  // [N, K] float32 on the CPU; undefined when the network has none
};

class FeatureNetwork {
 public:
  virtual ~FeatureNetwork() = default;
  // images [N, C, H, W] in [-1, 1] (1-channel images are repeated to 3 where the network wants 3).
  virtual ImageFeatures measure(const at::Tensor& images) = 0;
  // Names the network and its weights (a checksum of the file): reference statistics are cached
  // under it.
  virtual std::string identity() const = 0;
};

// The network eval.features names, on `device`. Throws ConfigError naming the key when its file
// is not set, IoError naming the file when it cannot be loaded.
std::unique_ptr<FeatureNetwork> make_feature_network(const EvalConfig& eval, const c10::Device& device);

}  // namespace ditlab
