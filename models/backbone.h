// The one interface every backbone implements. The trainer and the samplers (later also the
// exporter and the FLOPs counter) see only this plus the model config; they never ask which
// backbone they hold.
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <map>
#include <string>

namespace ditlab {

class WidthRoles;

struct BackboneOutput {
  at::Tensor out;       // [N, C_out, H, W]
  at::Tensor aux_loss;  // scalar added to the diffusion loss; undefined if none
  std::map<std::string, at::Tensor> metrics;  // scalars to log (e.g. expert loads)
};

// What a backbone consumes and produces, fixed at construction.
struct BackboneShape {
  int64_t input_size = 0;    // H = W of the input
  int64_t in_channels = 0;   // C
  int64_t out_channels = 0;  // C, or 2C with learned sigma
  int64_t num_classes = 0;   // label ids 0..num_classes-1; num_classes itself is the null label
  bool has_null_class = true;  // whether the null label exists (needed for guidance)
};

// Options of one sampling run that a backbone may use to trade exactness for speed.
// µP's per-parameter AdamW multipliers (models/mup/parametrization.h); 1 and 1 under the standard
// parametrization.
struct OptimizerScaling {
  double lr = 1.0;
  double weight_decay = 1.0;
};

struct SamplingCache {
  int64_t interval = 1;  // run the whole network every interval-th step; 1 = always (no cache)
  int64_t depth = 4;     // blocks at each end that still run on the other steps
};

class Backbone : public torch::nn::Module {
 public:
  // x [N, C, H, W] float, t [N] int64 diffusion timesteps, y [N] int64 labels (null = num_classes).
  virtual BackboneOutput forward(const at::Tensor& x, const at::Tensor& t,
                                 const at::Tensor& y) = 0;

  // Classifier-free guidance, as in the official DiT: the batch is [cond half; null half] over
  // the same noise; the first half of x is run twice, and on the first `cfg_channels` output
  // channels (0: all noise channels) uncond + scale * (cond - uncond) replaces both halves.
  virtual at::Tensor forward_with_cfg(const at::Tensor& x, const at::Tensor& t,
                                      const at::Tensor& y, double scale, int64_t cfg_channels);

  virtual BackboneShape shape() const = 0;

  // Throws unless forward(x, t, y) can take these inputs: what every forward checks (see
  // check_input) and, besides, every label within [0, num_classes) ([0, num_classes] with the
  // null row), naming the offending label. The label check reads y's values, which on a GPU
  // waits for the stream, so forward leaves it out of the training hot path (labels come from
  // the data, checked against num_classes when it is loaded, and from the samplers); call this
  // on inputs from outside, as `dit forward` does.
  void validate_inputs(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) const;

  // Multiply-accumulates of one forward pass for one sample, counted analytically from the
  // architecture the way the DiT family's papers count "Gflops" (one MAC = one FLOP; matmuls,
  // attention products and convolutions; not norms, activations or elementwise ops; U-DiT's
  // FFNs in their folded inference form). Training costs about 3x this per image (forward +
  // backward), i.e. 6 x MACs FLOPs.
  virtual int64_t forward_macs() const = 0;
  // The same for the forward pass as training runs it, the base of training FLOPs and MFU. It
  // differs from forward_macs() only where training runs another form: U-DiT's FFNs unfolded
  // (about 1.2x the folded model).
  virtual int64_t training_forward_macs() const { return forward_macs(); }

  // Around one sampling run; the sampler calls both. Backbones that can reuse deep features
  // across denoising steps (Skip-DiT's Skip-Cache) use `cache`; the others reject an
  // interval > 1 with ConfigError.
  virtual void begin_sampling(const SamplingCache& cache);
  virtual void end_sampling() {}
  // Whether AdamW's weight decay applies to the parameter `name` (its state-dict key). Every
  // backbone here decays everything, as the official recipes do (DiM's included: its
  // initialize_train_state hands all parameters to one AdamW); an override may exempt some.
  virtual bool decays(const std::string& name) const { return true; }

  // µP: the width role and the standard initialisation law of every trainable parameter,
  // declared by the layers that own them (models/mup/width_roles.h).
  virtual void declare_width_roles(WidthRoles& roles) const = 0;
  // The multipliers µP assigned to the parameter `name` (its state-dict key).
  OptimizerScaling optimizer_scaling(const std::string& name) const;
  void set_optimizer_scaling(std::map<std::string, OptimizerScaling> scaling) {
    optimizer_scaling_ = std::move(scaling);
  }

 protected:
  // Throws ShapeError unless x is [N, in_channels, input_size, input_size] (per shape()) and
  // t and y are [N], naming `model` and the shapes or batch sizes that disagree. Only shapes are
  // looked at (no values are read), so every forward calls it at no cost.
  void check_input(const char* model, const at::Tensor& x, const at::Tensor& t,
                   const at::Tensor& y) const;

 private:
  std::map<std::string, OptimizerScaling> optimizer_scaling_;  // empty: standard parametrization
};

}  // namespace ditlab
