#include "models/backbone.h"

#include <ATen/ATen.h>

#include <sstream>

#include "src/common/error.h"

namespace ditlab {

at::Tensor Backbone::forward_with_cfg(const at::Tensor& x, const at::Tensor& t,
                                      const at::Tensor& y, double scale, int64_t cfg_channels) {
  if (cfg_channels < 0) {
    throw ConfigError("cfg_channels " + std::to_string(cfg_channels) +
                      " is negative; give the number of guided output channels (0 = all noise "
                      "channels)");
  }
  const int64_t n = x.size(0);
  if (n % 2 != 0) throw ShapeError("forward_with_cfg needs an even batch ([cond; uncond])");
  const int64_t guided = cfg_channels == 0 ? shape().in_channels : cfg_channels;
  auto half = x.narrow(0, 0, n / 2);
  // [N, C_out, H, W]; in float32 before the guidance is combined, so that under autocast
  // (sample.precision bf16) only the network runs in bf16 and the scale does not magnify the
  // rounding of its output.
  auto out = forward(at::cat({half, half}, 0), t, y).out;
  if (out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kHalf) out = out.to(at::kFloat);
  if (guided > out.size(1)) {
    throw ShapeError("cfg_channels " + std::to_string(guided) + " exceeds the model's " +
                     std::to_string(out.size(1)) + " output channels");
  }
  auto eps = out.narrow(1, 0, guided);
  auto rest = out.narrow(1, guided, out.size(1) - guided);
  auto cond = eps.narrow(0, 0, n / 2), uncond = eps.narrow(0, n / 2, n / 2);
  auto guided_eps = uncond + scale * (cond - uncond);
  return at::cat({at::cat({guided_eps, guided_eps}, 0), rest}, 1);
}

void Backbone::check_input(const char* model, const at::Tensor& x, const at::Tensor& t,
                           const at::Tensor& y) const {
  const BackboneShape s = shape();
  if (!x.defined() || x.dim() != 4 || x.size(1) != s.in_channels || x.size(2) != s.input_size ||
      x.size(3) != s.input_size) {
    std::ostringstream msg;
    msg << model << " expects x of shape [N, " << s.in_channels << ", " << s.input_size << ", "
        << s.input_size << "], got ";
    if (x.defined()) {
      msg << x.sizes();
    } else {
      msg << "no tensor";
    }
    throw ShapeError(msg.str());
  }
  const int64_t n = x.size(0);
  auto one_per_sample = [&](const char* name, const at::Tensor& v, const char* what) {
    if (!v.defined() || v.dim() != 1) {
      std::ostringstream msg;
      msg << model << " expects " << name << " of shape [N], one " << what << " per sample, got ";
      if (v.defined()) {
        msg << v.sizes();
      } else {
        msg << "no tensor";
      }
      throw ShapeError(msg.str());
    }
    if (v.size(0) != n) {
      throw ShapeError(std::string(model) + ": x has batch size " + std::to_string(n) + " but " +
                       name + " has " + std::to_string(v.size(0)) + " entries (one " + what +
                       " per sample)");
    }
  };
  one_per_sample("t", t, "timestep");
  one_per_sample("y", y, "class label");
}

void Backbone::validate_inputs(const at::Tensor& x, const at::Tensor& t,
                               const at::Tensor& y) const {
  check_input("the model", x, t, y);
  if (y.numel() == 0) return;
  const BackboneShape s = shape();
  const int64_t end = s.num_classes + (s.has_null_class ? 1 : 0);  // rows of the label table
  // The smallest and the largest label, in one copy to the host however large the batch.
  const at::Tensor both = at::stack({y.min(), y.max()}).cpu().to(at::kLong);  // [2]
  const int64_t lowest = both[0].item<int64_t>(), highest = both[1].item<int64_t>();
  if (lowest >= 0 && highest < end) return;
  const std::string classes = std::to_string(s.num_classes);
  const std::string range =
      s.has_null_class
          ? "[0, " + classes + "] (num_classes " + classes + "; " + classes + " is the null label)"
          : "[0, " + classes + ") (num_classes " + classes +
                "; the model has no null label row: model.class_dropout_prob was 0)";
  throw ShapeError("label " + std::to_string(lowest < 0 ? lowest : highest) +
                   " in y is outside " + range + "; give class ids the model was built for");
}

void Backbone::begin_sampling(const SamplingCache& cache) {
  if (cache.interval > 1) {
    throw ConfigError("sample.cache_interval " + std::to_string(cache.interval) +
                      ": this backbone has no feature cache (Skip-Cache needs a skip-dit model); "
                      "use sample.cache_interval=1");
  }
}

OptimizerScaling Backbone::optimizer_scaling(const std::string& name) const {
  auto it = optimizer_scaling_.find(name);
  return it == optimizer_scaling_.end() ? OptimizerScaling{} : it->second;
}

}  // namespace ditlab
