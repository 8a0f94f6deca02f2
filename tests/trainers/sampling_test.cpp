#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <utility>

#include "models/registry.h"
#include "src/common/error.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"
#include "trainers/sampling.h"

using namespace ditlab;

namespace {
std::shared_ptr<Backbone> random_model(double class_dropout = 0.1) {
  ModelConfig c;
  c.name = "dit";
  c.depth = 1;
  c.hidden_size = 16;
  c.num_heads = 2;
  c.patch_size = 2;
  c.input_size = 8;
  c.in_channels = 1;
  c.num_classes = 3;
  c.class_dropout_prob = class_dropout;
  at::manual_seed(0);
  auto m = build_backbone(c);
  torch::NoGradGuard g;
  for (auto& p : m->named_parameters()) {
    if (p.key() != "pos_embed") p.value().normal_(0, 0.1);
  }
  return m;
}
}  // namespace

TEST_CASE("sampling gives [N, C, H, W] in range, determined by the seed", "[sampling]") {
  auto model = random_model();
  DiffusionConfig dc;
  SampleConfig sc;
  sc.steps = 5;
  auto labels = grid_labels(3, 2);
  CHECK(at::equal(labels, at::tensor({0, 0, 1, 1, 2, 2})));
  for (const char* sampler : {"ddim", "ddpm"}) {
    INFO(sampler);
    sc.sampler = sampler;
    sc.seed = 1;
    auto a = generate_samples(*model, dc, sc, labels, c10::Device("cpu"));
    auto b = generate_samples(*model, dc, sc, labels, c10::Device("cpu"));
    sc.seed = 2;
    auto c = generate_samples(*model, dc, sc, labels, c10::Device("cpu"));
    CHECK(a.sizes() == at::IntArrayRef({6, 1, 8, 8}));
    CHECK(at::equal(a, b));
    CHECK_FALSE(at::equal(a, c));
    CHECK(a.abs().max().item<float>() <= 1.0f + 1e-5f);
  }
  // Guidance changes the samples; scale 1 skips the unconditional half entirely.
  sc.sampler = "ddim";
  sc.cfg_scale = 1.0;
  auto plain = generate_samples(*model, dc, sc, labels, c10::Device("cpu"));
  sc.cfg_scale = 4.0;
  auto guided = generate_samples(*model, dc, sc, labels, c10::Device("cpu"));
  CHECK_FALSE(at::allclose(plain, guided));
  // sample.precision bf16: the backbone under autocast gives float32 samples near the fp32 ones.
  sc.precision = "bf16";
  auto in_bf16 = generate_samples(*model, dc, sc, labels, c10::Device("cpu"));
  CHECK(in_bf16.scalar_type() == at::kFloat);
  CHECK_FALSE(at::equal(in_bf16, guided));
  // (Guidance at 4 magnifies the backbone's rounding, and clipping x0 makes a few pixels jump.)
  const double mean_difference = (in_bf16 - guided).abs().mean().item<double>();
  INFO("mean |bf16 - fp32| " << mean_difference << ", mean |fp32| " << guided.abs().mean().item<double>());
  CHECK(mean_difference < 0.1 * guided.abs().mean().item<double>());
}

TEST_CASE("a sample does not depend on the batch it is drawn in", "[sampling]") {
  auto model = random_model();
  DiffusionConfig dc;
  SampleConfig sc;
  sc.steps = 5;
  sc.seed = 3;
  sc.cfg_scale = 2.0;
  const auto labels = grid_labels(3, 2);
  const c10::Device cpu("cpu");
  // DDPM and DDIM with eta > 0 draw fresh noise at every step: each sample from its own stream.
  for (const auto& [sampler, eta] : {std::pair<const char*, double>{"ddpm", 0.0}, {"ddim", 0.5}, {"ddim", 0.0}}) {
    INFO(sampler << " eta " << eta);
    sc.sampler = sampler;
    sc.eta = eta;
    const at::Tensor whole = generate_samples(*model, dc, sc, labels, cpu);
    const at::Tensor head = generate_samples(*model, dc, sc, labels.narrow(0, 0, 2), cpu, 0);
    const at::Tensor tail = generate_samples(*model, dc, sc, labels.narrow(0, 2, 4), cpu, 2);
    // Equal up to the float rounding of products over different batch sizes.
    CHECK(at::allclose(at::cat({head, tail}), whole, 1e-4, 1e-5));
    // The numbering, not the position in the batch, picks the noise.
    const at::Tensor shifted = generate_samples(*model, dc, sc, labels.narrow(0, 0, 2), cpu, 4);
    CHECK_FALSE(at::equal(shifted, head));
    // sample.batch_size draws them a few at a time (4 + 2 here): the same samples.
    SampleConfig in_batches = sc;
    in_batches.batch_size = 4;
    CHECK(at::allclose(generate_samples(*model, dc, in_batches, labels, cpu), whole, 1e-4, 1e-5));
  }
}

TEST_CASE("samples are written as a PNG grid or as safetensors", "[sampling]") {
  ditlab::testing::TempDir dir("samples");
  auto samples = at::rand({6, 1, 8, 8}) * 2 - 1;
  auto labels = grid_labels(3, 2);
  write_samples(dir / "s.safetensors", samples, labels, 2);
  auto f = read_safetensors(dir / "s.safetensors");
  CHECK(at::equal(f.tensors.at("samples"), samples));
  CHECK(at::equal(f.tensors.at("labels"), labels));
#ifdef DITLAB_WITH_OPENCV
  write_samples(dir / "s.png", samples, labels, 2);
  CHECK(std::filesystem::file_size(dir / "s.png") > 100);
#endif
  CHECK_THROWS_AS(write_samples(dir / "s.jpg2", samples, labels, 2), UsageError);
}

TEST_CASE("impossible sampling settings are refused before any work", "[sampling]") {
  ModelConfig model;
  model.in_channels = 1;
  DiffusionConfig dc;
  SampleConfig sc;
  CHECK_NOTHROW(check_sample_config(model, dc, sc));
  sc.steps = 2000;
  CHECK_THROWS_WITH(check_sample_config(model, dc, sc), Catch::Contains("sample.steps"));
  sc = SampleConfig();
  sc.cfg_channels = 3;  // the official 3-of-4 channels do not exist on a 1-channel model
  CHECK_THROWS_WITH(check_sample_config(model, dc, sc), Catch::Contains("sample.cfg_channels"));
  sc = SampleConfig();
  model.class_dropout_prob = 0.0;
  CHECK_THROWS_WITH(check_sample_config(model, dc, sc), Catch::Contains("null class"));
  sc.cfg_scale = 1.0;
  CHECK_NOTHROW(check_sample_config(model, dc, sc));
  // And at sampling time, from the model itself.
  auto unconditional_only = random_model(/*class_dropout=*/0.0);
  sc.cfg_scale = 2.0;
  sc.steps = 2;
  CHECK_THROWS_AS(generate_samples(*unconditional_only, dc, sc, grid_labels(3, 1), c10::Device("cpu")),
                  ConfigError);
  CHECK_THROWS_AS(check_sample_output("grid.jpg"), UsageError);
  CHECK_NOTHROW(check_sample_output("s.safetensors"));
}
