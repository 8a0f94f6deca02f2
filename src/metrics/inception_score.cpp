#include "src/metrics/inception_score.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "src/common/error.h"

namespace ditlab {

InceptionScore inception_score(const at::Tensor& probabilities, int64_t splits) {
  const at::Tensor p = probabilities.to(at::kDouble);
  if (p.dim() != 2 || splits < 1 || p.size(0) < splits) {
    throw ShapeError("the Inception Score needs probabilities [N, K] with N >= splits (" +
                     std::to_string(splits) + ")");
  }
  const int64_t n = p.size(0);
  std::vector<double> scores;
  for (int64_t s = 0; s < splits; ++s) {  // split s: rows [s N / splits, (s + 1) N / splits)
    const int64_t first = s * n / splits, last = (s + 1) * n / splits;
    const at::Tensor part = p.narrow(0, first, last - first);
    const at::Tensor marginal = part.mean(0, /*keepdim=*/true);
    // 0 log 0 = 0: classes a prediction gives no mass contribute nothing.
    const at::Tensor kl = at::where(part > 0, part * (part.clamp_min(1e-300).log() - marginal.clamp_min(1e-300).log()),
                                    at::zeros_like(part)).sum(1);
    scores.push_back(std::exp(kl.mean().item<double>()));
  }
  InceptionScore is;
  for (double s : scores) is.mean += s / static_cast<double>(splits);
  for (double s : scores) is.std += (s - is.mean) * (s - is.mean) / static_cast<double>(splits);
  is.std = std::sqrt(is.std);
  return is;
}

}  // namespace ditlab
