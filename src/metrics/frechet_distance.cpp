#include "src/metrics/frechet_distance.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "src/common/error.h"

namespace ditlab {

FeatureStatistics feature_statistics(const at::Tensor& features) {
  if (features.dim() != 2 || features.size(0) < 2) {
    throw ShapeError("feature statistics need features [N, D] with N >= 2, got " +
                     std::to_string(features.dim()) + " dimensions and " +
                     std::to_string(features.dim() ? features.size(0) : 0) + " rows");
  }
  const at::Tensor x = features.to(at::kDouble);
  FeatureStatistics s;
  s.count = x.size(0);
  s.mean = x.mean(0);
  const at::Tensor centred = x - s.mean;
  s.covariance = centred.t().mm(centred) / static_cast<double>(s.count - 1);
  return s;
}

void FeatureMoments::add(const at::Tensor& features) {
  const at::Tensor x = features.to(at::kDouble);
  if (!sum.defined()) {
    sum = at::zeros({x.size(1)}, x.options());
    outer = at::zeros({x.size(1), x.size(1)}, x.options());
  }
  sum += x.sum(0);
  outer += x.t().mm(x);
  count += x.size(0);
}

FeatureStatistics FeatureMoments::statistics() const {
  if (count < 2) throw ShapeError("feature statistics need at least 2 feature vectors, got " + std::to_string(count));
  FeatureStatistics s;
  s.count = count;
  s.mean = sum / static_cast<double>(count);
  s.covariance = (outer - static_cast<double>(count) * at::outer(s.mean, s.mean)) / static_cast<double>(count - 1);
  return s;
}

at::Tensor sqrt_psd(const at::Tensor& matrix) {
  const at::Tensor m = matrix.to(at::kDouble);
  const at::Tensor symmetric = (m + m.t()) / 2;  // rounding can leave it slightly asymmetric
  auto [values, vectors] = at::linalg_eigh(symmetric);
  return vectors.mm(at::diag(values.clamp_min(0).sqrt())).mm(vectors.t());
}

double trace_sqrt_product(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor root_a = sqrt_psd(a);
  const at::Tensor inner = root_a.mm(b.to(at::kDouble)).mm(root_a);
  const at::Tensor eigenvalues = at::linalg_eigvalsh((inner + inner.t()) / 2);
  return eigenvalues.clamp_min(0).sqrt().sum().item<double>();
}

double frechet_distance(const FeatureStatistics& a, const FeatureStatistics& b) {
  if (a.mean.sizes() != b.mean.sizes()) {
    throw ShapeError("Fréchet distance between features of dimension " + std::to_string(a.mean.size(0)) +
                     " and " + std::to_string(b.mean.size(0)));
  }
  const double mean_term = (a.mean - b.mean).pow(2).sum().item<double>();
  const double traces = (a.covariance.trace() + b.covariance.trace()).item<double>();
  const double d2 = mean_term + traces - 2.0 * trace_sqrt_product(a.covariance, b.covariance);
  return std::max(d2, 0.0);  // rounding can take an exact 0 a little below
}

}  // namespace ditlab
