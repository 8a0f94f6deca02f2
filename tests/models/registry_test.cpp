#include <catch2/catch.hpp>

#include <torch/nn/module.h>

#include <string>
#include <vector>

#include "models/registry.h"
#include "src/common/error.h"
#include "tests/models/small_model_config.h"

using namespace ditlab;

TEST_CASE("which backbones' training step a CUDA graph can record", "[registry]") {
  for (const char* name : {"dit", "DiT-XL/2", "skip-dit", "u-dit", "dim"}) {
    INFO(name);
    CHECK(recordable_as_cuda_graph(name));
  }
  // Token routing reads expert counts back to the host and sizes tensors by them.
  CHECK_FALSE(recordable_as_cuda_graph("dit-moe"));
  CHECK_FALSE(recordable_as_cuda_graph("DiT-MoE-S/2-8E2A"));
  CHECK_THROWS_AS(recordable_as_cuda_graph("no-such-model"), ConfigError);
}

namespace {
int64_t count_parameters(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}
}  // namespace

TEST_CASE("model_cost prices every backbone and conditioning as the built model counts itself",
          "[registry]") {
  // The debug sizes of the family tests: 8x8x3 inputs (a 4x4 grid at patch 2), 5 classes.
  struct Case {
    std::string family, conditioning;
  };
  std::vector<Case> cases;
  for (const char* family : {"dit", "skip-dit", "dit-moe"}) {
    for (const char* conditioning : {"adaln_zero", "adaln", "cross_attention", "in_context"}) {
      cases.push_back({family, conditioning});
    }
  }
  cases.push_back({"u-dit", "adaln_zero"});
  cases.push_back({"dim", "adaln_zero"});
  for (const auto& [family, conditioning] : cases) {
    INFO(family << " " << conditioning);
    const ModelConfig c = ditlab::testing::small_model_config(family, conditioning);
    const ModelCost cost = model_cost(c);
    auto model = build_backbone(c);
    CHECK(cost.forward_macs == model->forward_macs());
    // U-DiT's cost counts its FFNs folded (the paper's inference form), the module holds both.
    if (family != "u-dit") {
      CHECK(cost.parameters == count_parameters(*model));
    }
    // The sequence the blocks see: in-context conditioning adds the time and class tokens.
    if (family != "u-dit" && family != "dim") {
      CHECK(cost.tokens == 4 * 4 + (conditioning == "in_context" ? 2 : 0));
    }
  }
}
