// The Fréchet distance between two Gaussians fitted to feature sets (FID when the features are
// Inception's pool3, Heusel et al. 2017):
//   d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)),
// computed in double precision. Tr (S1 S2)^(1/2) is taken as Tr (S1^(1/2) S2 S1^(1/2))^(1/2):
// the same eigenvalues, but a symmetric positive semi-definite matrix whose square root comes
// from a symmetric eigendecomposition (no complex parts to discard, as scipy's sqrtm leaves).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ditlab {

// Mean and covariance (unbiased, as numpy's np.cov) of features [N, D], in double.
struct FeatureStatistics {
  at::Tensor mean;        // [D]
  at::Tensor covariance;  // [D, D]
  int64_t count = 0;
};
FeatureStatistics feature_statistics(const at::Tensor& features);

// The same statistics accumulated batch by batch (sums of x and x x^T in double), for feature
// sets too large to hold, or spread over ranks (sum the moments, then take the statistics).
struct FeatureMoments {
  at::Tensor sum;    // [D]
  at::Tensor outer;  // [D, D]
  int64_t count = 0;
  void add(const at::Tensor& features);
  FeatureStatistics statistics() const;
};

// The square root of a symmetric positive semi-definite matrix (eigenvalues below 0, from
// rounding, count as 0), in double.
at::Tensor sqrt_psd(const at::Tensor& matrix);

// Tr (a b)^(1/2) for symmetric positive semi-definite a and b.
double trace_sqrt_product(const at::Tensor& a, const at::Tensor& b);

// Throws ShapeError when the dimensions differ.
double frechet_distance(const FeatureStatistics& a, const FeatureStatistics& b);

}  // namespace ditlab
