#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <string>
#include <vector>

#include "models/backbone.h"
#include "models/registry.h"
#include "src/common/error.h"
#include "tests/models/small_model_config.h"

using namespace ditlab;
using ditlab::testing::small_model_config;

namespace {

const std::vector<std::string>& families() {
  static const std::vector<std::string> names = {"dit", "skip-dit", "dit-moe", "u-dit", "dim"};
  return names;
}

at::Tensor labels(const std::vector<int64_t>& values) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong));
}

}  // namespace

TEST_CASE("every backbone refuses t and y that are not one entry per sample of x", "[backbone]") {
  torch::NoGradGuard no_grad;
  for (const auto& family : families()) {
    INFO(family);
    auto model = build_backbone(small_model_config(family));
    auto x = at::randn({1, 3, 8, 8});
    auto t4 = labels({10, 20, 30, 40}), y4 = labels({0, 1, 2, 3});
    // x holds 1 sample, t and y 4: the error names both batch sizes.
    CHECK_THROWS_AS(model->forward(x, t4, y4), ShapeError);
    CHECK_THROWS_WITH(model->forward(x, t4, y4),
                      Catch::Contains("batch size 1") && Catch::Contains("t has 4 entries"));
    // Only y disagrees.
    CHECK_THROWS_WITH(model->forward(x, labels({10}), y4),
                      Catch::Contains("batch size 1") && Catch::Contains("y has 4 entries"));
    // Not 1-D.
    CHECK_THROWS_WITH(model->forward(x, labels({10}).view({1, 1}), labels({0})),
                      Catch::Contains("t of shape [N]") && Catch::Contains("[1, 1]"));
    CHECK_THROWS_WITH(model->forward(x, labels({10}), at::scalar_tensor(0, at::kLong)),
                      Catch::Contains("y of shape [N]"));
    // The same inputs with one entry each run.
    CHECK(model->forward(x, labels({10}), labels({0})).out.size(0) == 1);
  }
}

TEST_CASE("validate_inputs refuses labels outside the label table, naming the label and num_classes",
          "[backbone]") {
  for (const auto& family : families()) {
    INFO(family);
    ModelConfig c = small_model_config(family);
    c.class_dropout_prob = 0.0;  // no null row: labels 0..4
    auto plain = build_backbone(c);
    REQUIRE_FALSE(plain->shape().has_null_class);
    auto x = at::randn({2, 3, 8, 8});
    auto t = labels({10, 20});
    CHECK_NOTHROW(plain->validate_inputs(x, t, labels({0, 4})));
    CHECK_THROWS_AS(plain->validate_inputs(x, t, labels({1, 5})), ShapeError);
    CHECK_THROWS_WITH(plain->validate_inputs(x, t, labels({1, 5})),
                      Catch::Contains("label 5") && Catch::Contains("num_classes 5") &&
                          Catch::Contains("[0, 5)"));
    CHECK_THROWS_WITH(plain->validate_inputs(x, t, labels({-1, 5})), Catch::Contains("label -1"));
    // It checks the shapes too.
    CHECK_THROWS_WITH(plain->validate_inputs(x, labels({10}), labels({0})),
                      Catch::Contains("batch size 2") && Catch::Contains("t has 1 entries"));

    c.class_dropout_prob = 0.1;  // with the null row: num_classes itself is the null label
    auto guided = build_backbone(c);
    REQUIRE(guided->shape().has_null_class);
    CHECK_NOTHROW(guided->validate_inputs(x, t, labels({0, 5})));
    CHECK_THROWS_WITH(guided->validate_inputs(x, t, labels({6, 0})),
                      Catch::Contains("label 6") && Catch::Contains("num_classes 5") &&
                          Catch::Contains("[0, 5]"));
  }
}

TEST_CASE("forward_with_cfg refuses a negative cfg_channels, naming it", "[backbone]") {
  auto model = build_backbone(small_model_config("dit"));
  torch::NoGradGuard no_grad;
  auto x = at::randn({2, 3, 8, 8});
  auto t = labels({10, 10}), y = labels({1, 5});
  CHECK_THROWS_AS(model->forward_with_cfg(x, t, y, 2.0, -2), ConfigError);
  CHECK_THROWS_WITH(model->forward_with_cfg(x, t, y, 2.0, -2), Catch::Contains("cfg_channels -2"));
  CHECK(model->forward_with_cfg(x, t, y, 2.0, 0).sizes() == at::IntArrayRef({2, 6, 8, 8}));
}
