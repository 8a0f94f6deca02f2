#include "src/metrics/precision_recall.h"

#include <ATen/ATen.h>

#include "src/common/error.h"

namespace ditlab {
namespace {
constexpr int64_t kBlock = 1024;  // rows per block of the distance matrix

// Double on CPUs; float32 on GPUs (as ADM's evaluator), where double is slow.
at::Tensor for_distances(const at::Tensor& t) { return t.to(t.is_cuda() ? at::kFloat : at::kDouble); }
}  // namespace

at::Tensor kth_neighbour_radii(const at::Tensor& points, int64_t k) {
  const at::Tensor x = for_distances(points);
  const int64_t n = x.size(0);
  if (k < 1 || n <= k) {
    throw ShapeError("the k-th nearest neighbour needs more than k = " + std::to_string(k) +
                     " points, got " + std::to_string(n));
  }
  at::Tensor radii = at::empty({n}, x.options());
  for (int64_t first = 0; first < n; first += kBlock) {
    const int64_t rows = std::min(kBlock, n - first);
    const at::Tensor d = at::cdist(x.narrow(0, first, rows), x);
    // The smallest k + 1 distances include the point itself (0): the k-th neighbour is the last.
    radii.narrow(0, first, rows).copy_(std::get<0>(d.topk(k + 1, 1, /*largest=*/false)).select(1, k));
  }
  return radii;
}

double fraction_covered(const at::Tensor& centres, const at::Tensor& radii, const at::Tensor& queries) {
  const at::Tensor c = for_distances(centres), q = for_distances(queries).to(c.device());
  int64_t covered = 0;
  for (int64_t first = 0; first < q.size(0); first += kBlock) {
    const int64_t rows = std::min(kBlock, q.size(0) - first);
    const at::Tensor d = at::cdist(q.narrow(0, first, rows), c);  // [rows, N]
    covered += (d <= radii.to(d.options()).unsqueeze(0)).any(1).sum().item<int64_t>();
  }
  return static_cast<double>(covered) / static_cast<double>(q.size(0));
}

PrecisionRecall precision_recall(const at::Tensor& real, const at::Tensor& generated, int64_t k) {
  if (real.dim() != 2 || generated.dim() != 2 || real.size(1) != generated.size(1)) {
    throw ShapeError("precision and recall need features [N, D] and [M, D] of the same D");
  }
  PrecisionRecall pr;
  pr.precision = fraction_covered(real, kth_neighbour_radii(real, k), generated);
  pr.recall = fraction_covered(generated, kth_neighbour_radii(generated, k), real);
  return pr;
}

}  // namespace ditlab
