// The Fréchet distance against closed forms and against a square root computed another way.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "src/common/error.h"
#include "src/metrics/frechet_distance.h"

using namespace ditlab;

namespace {
FeatureStatistics gaussian(const at::Tensor& mean, const at::Tensor& covariance) {
  return {mean.to(at::kDouble), covariance.to(at::kDouble), 1000};
}

// The principal square root of a matrix by the Denman-Beavers iteration (no eigendecomposition).
at::Tensor denman_beavers_sqrt(const at::Tensor& a) {
  at::Tensor y = a.to(at::kDouble), z = at::eye(a.size(0), at::kDouble);
  for (int i = 0; i < 60; ++i) {
    const at::Tensor y_next = (y + at::inverse(z)) / 2;
    z = (z + at::inverse(y)) / 2;
    y = y_next;
  }
  return y;
}

at::Tensor random_spd(int64_t d, uint64_t seed) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor m = at::randn({d, d}, g, at::kDouble);
  return m.mm(m.t()) / static_cast<double>(d) + 0.1 * at::eye(d, at::kDouble);
}
}  // namespace

TEST_CASE("Fréchet distance of diagonal covariances has the closed form", "[metrics][fid]") {
  const at::Tensor mu1 = at::tensor({0.0, 1.0, -2.0}, at::kDouble), mu2 = at::tensor({1.0, 1.0, 0.5}, at::kDouble);
  const at::Tensor v1 = at::tensor({4.0, 1.0, 0.25}, at::kDouble), v2 = at::tensor({1.0, 9.0, 0.25}, at::kDouble);
  // |mu1 - mu2|^2 + sum (sqrt v1 - sqrt v2)^2 = (1 + 0 + 6.25) + (1 + 4 + 0) = 12.25
  CHECK(frechet_distance(gaussian(mu1, at::diag(v1)), gaussian(mu2, at::diag(v2))) == Approx(12.25).epsilon(1e-12));
  CHECK(frechet_distance(gaussian(mu1, at::diag(v1)), gaussian(mu1, at::diag(v1))) == Approx(0.0).margin(1e-10));
}

TEST_CASE("Fréchet distance of a rotated pair matches the 2x2 closed form", "[metrics][fid]") {
  const double angle = 0.5236;  // about 30 degrees
  const at::Tensor r = at::tensor({std::cos(angle), -std::sin(angle), std::sin(angle), std::cos(angle)},
                                  at::kDouble).view({2, 2});
  const at::Tensor s1 = at::diag(at::tensor({4.0, 1.0}, at::kDouble));
  const at::Tensor s2 = r.mm(at::diag(at::tensor({9.0, 0.25}, at::kDouble))).mm(r.t());
  // For 2x2 M = S1 S2 with non-negative eigenvalues: Tr M^(1/2) = sqrt(Tr M + 2 sqrt(det M)).
  const at::Tensor m = s1.mm(s2);
  const double expected_trace = std::sqrt(m.trace().item<double>() + 2 * std::sqrt(at::det(m).item<double>()));
  CHECK(trace_sqrt_product(s1, s2) == Approx(expected_trace).epsilon(1e-10));
  const at::Tensor zero = at::zeros({2}, at::kDouble);
  const double expected = (s1.trace() + s2.trace()).item<double>() - 2 * expected_trace;
  CHECK(frechet_distance(gaussian(zero, s1), gaussian(zero, s2)) == Approx(expected).epsilon(1e-10));
  // A rotation of the same covariance is still a different Gaussian (unless isotropic).
  CHECK(frechet_distance(gaussian(zero, s1), gaussian(zero, r.mm(s1).mm(r.t()))) > 0.1);
  CHECK(frechet_distance(gaussian(zero, at::eye(2, at::kDouble)),
                         gaussian(zero, r.mm(at::eye(2, at::kDouble)).mm(r.t()))) == Approx(0.0).margin(1e-10));
}

TEST_CASE("Tr (S1 S2)^(1/2) agrees with a Denman-Beavers square root in 20 dimensions", "[metrics][fid]") {
  const at::Tensor a = random_spd(20, 1), b = random_spd(20, 2);
  const double reference = denman_beavers_sqrt(a.mm(b)).trace().item<double>();
  CHECK(trace_sqrt_product(a, b) == Approx(reference).epsilon(1e-8));
  const at::Tensor root = sqrt_psd(a);
  CHECK(at::allclose(root.mm(root), a, 1e-10, 1e-10));
  // Isotropic scaling: N(0, I) against N(0, c I) in d dimensions is d (1 - sqrt c)^2.
  const at::Tensor zero = at::zeros({20}, at::kDouble), eye = at::eye(20, at::kDouble);
  CHECK(frechet_distance(gaussian(zero, eye), gaussian(zero, 4 * eye)) == Approx(20.0).epsilon(1e-10));
}

TEST_CASE("feature statistics are numpy's mean and unbiased covariance", "[metrics][fid]") {
  const at::Tensor x = at::tensor({1.0, 2.0, 3.0, 5.0, 5.0, 11.0}, at::kFloat).view({3, 2});
  const FeatureStatistics s = feature_statistics(x);
  CHECK(s.count == 3);
  CHECK(at::allclose(s.mean, at::tensor({3.0, 6.0}, at::kDouble)));
  // np.cov([[1,3,5],[2,5,11]]) = [[4, 9], [9, 21]]
  CHECK(at::allclose(s.covariance, at::tensor({4.0, 9.0, 9.0, 21.0}, at::kDouble).view({2, 2})));
  CHECK_THROWS_AS(feature_statistics(at::zeros({1, 4})), ShapeError);
  // Accumulated in two batches, the moments give the same statistics.
  FeatureMoments moments;
  moments.add(x.narrow(0, 0, 2));
  moments.add(x.narrow(0, 2, 1));
  const FeatureStatistics streamed = moments.statistics();
  CHECK(streamed.count == 3);
  CHECK(at::allclose(streamed.mean, s.mean));
  CHECK(at::allclose(streamed.covariance, s.covariance));
  CHECK_THROWS_AS(frechet_distance(s, feature_statistics(at::randn({5, 3}))), ShapeError);
}
