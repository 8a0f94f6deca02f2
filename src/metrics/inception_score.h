// The Inception Score (Salimans et al. 2016) from a classifier's predicted class probabilities:
//   IS = exp(E_x KL(p(y|x) || p(y))),
// averaged over `splits` equal parts as the reference code does (10 for 50k samples). It is 1
// when every prediction is the same, and the number of classes when predictions are confident
// and the classes equally frequent.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ditlab {

struct InceptionScore {
  double mean = 0.0;
  double std = 0.0;  // over the splits
};

// probabilities [N, K], rows summing to 1.
InceptionScore inception_score(const at::Tensor& probabilities, int64_t splits = 10);

}  // namespace ditlab
