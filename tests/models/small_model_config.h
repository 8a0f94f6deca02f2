// The debug sizes of the family tests (tests/models/<family>/), for tests that loop over every
// family: 8x8x3 inputs, 5 classes.
#pragma once
#include <string>

#include "src/config/experiment_config.h"

namespace ditlab::testing {

inline ModelConfig small_model_config(const std::string& family, const std::string& conditioning = "adaln_zero") {
  ModelConfig c;
  c.name = family;
  c.conditioning = conditioning;
  c.input_size = 8;
  c.in_channels = 3;
  c.num_classes = 5;
  if (family == "u-dit") {
    c.hidden_size = 16;
    c.num_heads = 2;
    c.level_depths = {1, 1, 2, 1, 1};
  } else if (family == "dim") {
    c.hidden_size = 16;
    c.depth = 3;
    c.patch_size = 2;
  } else {  // dit, skip-dit, dit-moe
    c.hidden_size = 32;
    c.num_heads = 2;
    c.depth = 2;
    c.patch_size = 2;
    if (family == "dit-moe") c.moe.num_experts = 4;
  }
  return c;
}

}  // namespace ditlab::testing
