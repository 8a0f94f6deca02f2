// Improved precision and recall (Kynkäänniemi et al. 2019): each feature set is a union of
// balls, one per point, of radius the distance to its k-th nearest neighbour in the same set.
// Precision is the fraction of generated points inside the real manifold (sample quality),
// recall the fraction of real points inside the generated one (coverage). Distances are
// Euclidean in feature space; the reference implementation (and ADM's evaluator) uses k = 3.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ditlab {

struct PrecisionRecall {
  double precision = 0.0;
  double recall = 0.0;
};

// real [N, D], generated [M, D]; both sets need more than k points.
PrecisionRecall precision_recall(const at::Tensor& real, const at::Tensor& generated, int64_t k = 3);

// The distance from every point of `points` [N, D] to its k-th nearest neighbour among the
// others, on the points' device (double on CPUs, float32 on GPUs); computed in blocks so that
// N x N distances are never held at once.
at::Tensor kth_neighbour_radii(const at::Tensor& points, int64_t k);

// The fraction of `queries` [M, D] that lie within radius[i] of some `centres`[i] [N, D].
double fraction_covered(const at::Tensor& centres, const at::Tensor& radii, const at::Tensor& queries);

}  // namespace ditlab
