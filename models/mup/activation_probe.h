// Mean absolute activations by kind ("attn", "mlp", "block", "output", ...), recorded by the
// layers while an ActivationProbe is alive on the calling thread: the µP coordinate check
// (trainers/width_study.h). Without a probe, record() is one thread-local read.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace ditlab {

class ActivationProbe {
 public:
  ActivationProbe();
  ~ActivationProbe();
  ActivationProbe(const ActivationProbe&) = delete;
  ActivationProbe& operator=(const ActivationProbe&) = delete;

  static void record(const char* kind, const at::Tensor& activation);
  // Whether a probe is listening (for quantities that cost work to form, such as logits).
  static bool active();

  // Per kind: mean |x| over all elements, averaged over the calls (layers) of that kind.
  std::map<std::string, double> means() const;

 private:
  ActivationProbe* previous_;
  std::map<std::string, std::pair<at::Tensor, int64_t>> sums_;  // on the activations' device
};

// Records `activation` as `kind` and returns it (for use inside return statements).
inline at::Tensor probe(const char* kind, at::Tensor activation) {
  ActivationProbe::record(kind, activation);
  return activation;
}

}  // namespace ditlab
