// µP for Adam ("Tensor Programs V", microsoft/mup; for DiT, "Scaling Diffusion Transformers
// Efficiently via µP"). A model is built and initialised in the standard parametrization (SP),
// then apply_mup compares it with the same architecture at the base width and, per declared role:
//
//   role     init std (vs SP at base)   Adam lr      weight decay   forward
//   input    as at the base width       lr           wd             -
//   vector   as at the base width       lr           wd             -
//   hidden   base std / sqrt(m)         lr / m       wd * m         -
//   output   as at the base width       lr           wd             input x output_mult / m
//   attention logits: attn_mult / head_dim instead of 1 / sqrt(head_dim)
//
// where m is the parameter's fan-in multiplier (its fan-in over the base model's). At the base
// width every factor is exactly 1, so the model and its training are the standard ones.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/mup/width_roles.h"
#include "src/config/experiment_config.h"

namespace ditlab {

class Backbone;

struct ParamWidth {
  std::string name;
  WidthRole role;
  InitLaw init;
  std::vector<int64_t> shape, base_shape;
  double fan_in_mult = 1.0;  // fan-in / the base model's fan-in (1 for input and vector roles)
  double init_scale = 1.0;   // what the SP initialisation is multiplied by
  int64_t output_rows = 0;   // trailing readout rows of a hidden weight (WidthDeclaration)
  double output_rows_scale = 1.0;  // their extra init factor: 1 / sqrt(fan_in_mult)
};

// Every trainable parameter of `model` with its declared role, checked: each is declared once,
// nothing else is declared, `base` has it with the same rank, and where the two widths differ
// the dimensions that grew fit the role. Throws ConfigError naming the parameter otherwise.
std::vector<ParamWidth> width_table(const Backbone& model, const Backbone& base);

// Rescales `model`'s SP initialisation, sets its readout and attention multipliers and its
// optimizer scaling. `base` is the same architecture built at model.mup.base_width (only its
// shapes and attention head sizes are read).
void apply_mup(Backbone& model, const Backbone& base, const MupConfig& config);

// Whether weights in a model of this config compute what they compute in the standard
// parametrization: µP off, or µP at its own base width and heads with unit multipliers (where
// every factor is 1).
bool forward_is_standard(const ModelConfig& config);

// µP's readout and attention multipliers live in the config, not in the tensors: weights trained
// under `source` compute another function in a model of `target` unless both forwards are
// standard or both have the same µP settings. Throws ConfigError naming `source_name` and both
// settings otherwise (same-shape weights assumed: the widths are the same).
void check_same_forward_multipliers(const ModelConfig& target, const ModelConfig& source,
                                    const std::string& source_name);

// The model config of the base model: hidden_size = mup.base_width, num_heads =
// mup.base_num_heads (when set), µP off. Throws ConfigError when mup.base_width is missing.
ModelConfig mup_base_config(const ModelConfig& config);

}  // namespace ditlab
