// The feature networks of dit eval: the classifier of dit train-classifier and a TorchScript
// network the test itself writes (with the calling convention of inception-2015-12-05.pt).
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <fstream>

#include "models/classifier/feature_network.h"
#include "models/classifier/image_classifier.h"
#include "src/common/error.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
// features = mean over pixels of (img / 255) times w; probabilities = softmax(features), plus a
// bias b unless no_output_bias (as inception-2015-12-05.pt).
void write_detector(const std::string& path, const at::Tensor& w, bool with_return_features) {
  torch::jit::Module m("Detector");
  m.register_parameter("w", w, false);
  m.register_parameter("b", 5 * at::randn({w.size(1)}), false);  // the output bias IS leaves out
  if (with_return_features) {
    m.define(R"(
      def forward(self, img: Tensor, return_features: bool = False, no_output_bias: bool = False) -> Tensor:
          x = img.float().mean(dim=[2, 3]) / 255.0
          f = torch.matmul(x, self.w)
          if return_features:
              return f
          if no_output_bias:
              return torch.softmax(f, dim=1)
          return torch.softmax(f + self.b, dim=1)
    )");
  } else {
    m.define(R"(
      def forward(self, img: Tensor) -> Tensor:
          return torch.matmul(img.float().mean(dim=[2, 3]) / 255.0, self.w)
    )");
  }
  m.save(path);
}
}  // namespace

TEST_CASE("a TorchScript detector gives features and probabilities of uint8 images", "[eval][features]") {
  TempDir dir("torchscript");
  const at::Tensor w = at::randn({3, 6});
  write_detector(dir / "detector.pt", w, true);
  EvalConfig ec;
  ec.features = "inception";
  ec.inception = dir / "detector.pt";
  auto network = make_feature_network(ec, c10::Device(c10::kCPU));
  CHECK_THAT(network->identity(), Catch::StartsWith("inception-"));
  const at::Tensor images = at::rand({4, 3, 8, 8}) * 2 - 1;
  const ImageFeatures out = network->measure(images);
  // The same computation by hand: [-1, 1] -> round((x + 1) * 127.5) in 0..255.
  const at::Tensor pixels = ((images + 1) * 127.5).round().clamp(0, 255);
  const at::Tensor expected = (pixels.mean({2, 3}) / 255.0).mm(w);
  CHECK(at::allclose(out.features, expected, 1e-5, 1e-6));
  REQUIRE(out.probabilities.defined());
  CHECK(at::allclose(out.probabilities, at::softmax(expected, 1), 1e-5, 1e-6));  // without the bias
  // Grey images are given as three equal channels.
  const at::Tensor grey = images.narrow(1, 0, 1);
  CHECK(at::allclose(network->measure(grey).features, network->measure(grey.repeat({1, 3, 1, 1})).features));

  // A network whose forward takes only the images gives features alone.
  write_detector(dir / "plain.pt", w, false);
  ec.inception = dir / "plain.pt";
  const ImageFeatures plain = make_feature_network(ec, c10::Device(c10::kCPU))->measure(images);
  CHECK(at::allclose(plain.features, expected, 1e-5, 1e-6));
  CHECK_FALSE(plain.probabilities.defined());
}

TEST_CASE("feature networks that cannot be used are errors naming the key or the file", "[eval][features]") {
  TempDir dir("features-bad");
  EvalConfig ec;
  CHECK_THROWS_WITH(make_feature_network(ec, c10::Device(c10::kCPU)), Catch::Contains("eval.classifier"));
  ec.features = "inception";
  CHECK_THROWS_WITH(make_feature_network(ec, c10::Device(c10::kCPU)), Catch::Contains("eval.inception"));
  std::ofstream(dir / "junk.pt") << "not a zip file";
  ec.inception = dir / "junk.pt";
  CHECK_THROWS_WITH(make_feature_network(ec, c10::Device(c10::kCPU)), Catch::Contains("junk.pt"));
  ec.features = "classifier";
  ec.classifier = dir / "missing.safetensors";
  CHECK_THROWS_WITH(make_feature_network(ec, c10::Device(c10::kCPU)), Catch::Contains("missing.safetensors"));
  write_safetensors(dir / "other.safetensors", {{"x", at::zeros({2})}});
  ec.classifier = dir / "other.safetensors";
  CHECK_THROWS_WITH(make_feature_network(ec, c10::Device(c10::kCPU)), Catch::Contains("classifier_config"));
}

TEST_CASE("the classifier round-trips through its weights file and feeds the feature network", "[eval][classifier]") {
  TempDir dir("classifier");
  torch::manual_seed(0);
  ImageClassifierOptions o;
  o.in_channels = 1;
  o.num_classes = 10;
  o.image_size = 32;
  o.channels = {8, 16, 24};
  ImageClassifier model(o);
  model->eval();
  const at::Tensor images = at::rand({3, 1, 32, 32}) * 2 - 1;
  torch::NoGradGuard no_grad;
  const at::Tensor logits = model->forward(images);
  CHECK(logits.sizes() == at::IntArrayRef({3, 10}));
  CHECK(model->features(images).sizes() == at::IntArrayRef({3, 24}));
  save_classifier(model, dir / "c.safetensors", {{"held_out_accuracy", "0.5"}});
  ImageClassifier back = load_classifier(dir / "c.safetensors");
  CHECK(at::allclose(back->forward(images), logits));
  CHECK(read_safetensors(dir / "c.safetensors").metadata.at("held_out_accuracy") == "0.5");

  EvalConfig ec;
  ec.classifier = dir / "c.safetensors";
  auto network = make_feature_network(ec, c10::Device(c10::kCPU));
  // Measured as 8-bit images: the model's own features of the quantised images.
  const at::Tensor quantised = ((images + 1) * 127.5).round() / 127.5 - 1;
  CHECK_FALSE(at::allclose(model->features(images), model->features(quantised)));
  const ImageFeatures out = network->measure(images);
  CHECK(at::allclose(out.features, model->features(quantised)));
  CHECK(at::allclose(out.probabilities, at::softmax(model->forward(quantised), 1)));
  // 8-bit images (as the datasets give) are measured as they are.
  CHECK(at::allclose(network->measure(quantised).features, model->features(quantised)));
  CHECK_THROWS_WITH(network->measure(at::zeros({1, 3, 32, 32})), Catch::Contains("takes 1x32x32"));
  // Three stages halve the size twice: 30 does not divide.
  o.image_size = 30;
  CHECK_THROWS_WITH(ImageClassifier(o), Catch::Contains("30"));
}
