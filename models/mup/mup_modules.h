// The two places where µP changes a forward pass, as small interfaces the layers implement.
// parametrization.cpp sets the multipliers; under the standard parametrization they stay 1 and
// the forward passes are unchanged.
#pragma once
#include <cstdint>

namespace ditlab {

// A readout layer (an output-role weight): its input is multiplied by output_mult / width_mult,
// as microsoft/mup's MuReadout (the bias is not scaled).
class MupReadout {
 public:
  virtual ~MupReadout() = default;
  double readout_multiplier = 1.0;
  // Whether model.mup.output_mult applies (the network's readout) or only 1 / width_mult (a
  // router, whose logits output_mult would turn into a routing temperature).
  bool takes_output_mult = true;
};

// Dot-product attention: logits scale logit_multiplier / sqrt(head_dim), so that µP's
// attn_mult / head_dim is logit_multiplier = attn_mult / sqrt(head_dim).
class MupAttention {
 public:
  virtual ~MupAttention() = default;
  virtual int64_t head_dim() const = 0;
  double logit_multiplier = 1.0;
};

}  // namespace ditlab
