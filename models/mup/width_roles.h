// µP roles: how each parameter's shape grows with the model's width, and how the standard
// initialisation of the parameter depends on its shape. The layers that own parameters declare
// them (declare_width_roles next to each layer); models/mup/parametrization.h turns the
// declarations into initialisation scales, learning-rate multipliers and forward multipliers.
#pragma once
#include <map>
#include <memory>
#include <string>

namespace ditlab {

// The four kinds of "Tensor Programs V" (Yang et al.), by which dimensions grow with width.
enum class WidthRole {
  kInput,   // fan-in fixed, fan-out grows: patch and label embeddings, the timestep MLP's first layer
  kHidden,  // fan-in and fan-out grow: attention, MLP, modulation and skip weights
  kOutput,  // fan-in grows, fan-out fixed: the readout, DiT-MoE's router
  kVector,  // at most one dimension grows and it is not a fan-in: biases, norm gains, depthwise
            // convolutions, learned tokens and tables
};
const char* to_string(WidthRole role);

// How the standard (SP) initialisation's standard deviation depends on the tensor's fans
// (PyTorch's fan rule: fan_in = size(1) x receptive field, fan_out = size(0) x receptive field).
enum class InitLaw {
  kConstant,  // independent of the shape: zeros, ones, N(0, 0.02), fixed tables
  kFanIn,     // proportional to 1/sqrt(fan_in): PyTorch's default Linear/Conv init, kaiming
  kXavier,    // proportional to sqrt(2 / (fan_in + fan_out)): xavier_uniform
  kXavierFlat,  // xavier_uniform of the weight viewed as [out, in x receptive field] (the
                // DiT family's patch embeddings: fan_out without the receptive field)
};
// For hidden weights, whose fans grow together, every law but kConstant gives the same scale.
// A rank-1 tensor (a bias) with a fan-based law takes the fans of its layer's weight.

struct WidthDeclaration {
  WidthRole role;
  InitLaw init;
  // A hidden weight whose last `output_rows` rows feed a fixed-size output (DiM's x_proj: the dt
  // rows grow with the width, the scan's B and C rows do not). Those rows are a readout: µP for
  // Adam gives them variance 1/fan_in^2 ("Tensor Programs V", Table 3) with the hidden lr / m.
  int64_t output_rows = 0;
};

// Declarations keyed by full state-dict name. A scope shares the table and prefixes names, so a
// layer declares its own parameters without knowing where it sits in the model.
class WidthRoles {
 public:
  WidthRoles();
  WidthRoles scope(const std::string& child) const;

  void param(const std::string& name, WidthRole role, InitLaw init);
  // Marks the last `rows` rows of an already declared hidden weight as readout rows.
  void output_rows(const std::string& name, int64_t rows);
  // name.weight with `role` and `init`, and (with `bias`) name.bias as a vector whose init law
  // is `bias_init`: kConstant for zeroed biases, kFanIn for PyTorch's default U(+-1/sqrt(fan_in))
  // (a bias's fans are its weight's).
  void layer(const std::string& name, WidthRole role, InitLaw init, bool bias = true,
             InitLaw bias_init = InitLaw::kConstant);

  const std::map<std::string, WidthDeclaration>& declared() const { return *table_; }

 private:
  std::shared_ptr<std::map<std::string, WidthDeclaration>> table_;
  std::string prefix_;
};

}  // namespace ditlab
