#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include "src/common/error.h"
#include "src/metrics/inception_score.h"
#include "src/metrics/precision_recall.h"

using namespace ditlab;

namespace {
at::Tensor column(std::vector<double> values) {
  return at::tensor(values, at::kDouble).view({-1, 1});
}
}  // namespace

TEST_CASE("k-th neighbour radii on a line", "[metrics][precision_recall]") {
  const at::Tensor points = column({0, 1, 3, 6, 10});
  CHECK(at::equal(kth_neighbour_radii(points, 1), at::tensor({1.0, 1.0, 2.0, 3.0, 4.0}, at::kDouble)));
  CHECK(at::equal(kth_neighbour_radii(points, 2), at::tensor({3.0, 2.0, 3.0, 4.0, 7.0}, at::kDouble)));
  CHECK_THROWS_AS(kth_neighbour_radii(points, 5), ShapeError);
}

TEST_CASE("precision counts generated points on the real manifold, recall the reverse", "[metrics][precision_recall]") {
  const at::Tensor real = column({0, 1, 2, 3, 4, 5, 6, 7, 8, 9});  // k = 1: every radius is 1
  // Two generated points near the real ones, two far away (their own radii: 2, 2, 3, 3).
  const at::Tensor generated = column({0.5, 2.5, 100, 103});
  const PrecisionRecall pr = precision_recall(real, generated, 1);
  CHECK(pr.precision == Approx(0.5));  // 0.5 and 2.5 lie within 1 of a real point
  CHECK(pr.recall == Approx(0.5));     // the balls [-1.5, 2.5] and [0.5, 4.5] cover 0..4
  const PrecisionRecall same = precision_recall(real, real, 3);
  CHECK(same.precision == 1.0);
  CHECK(same.recall == 1.0);
  const PrecisionRecall apart = precision_recall(real, real + 1000, 3);
  CHECK(apart.precision == 0.0);
  CHECK(apart.recall == 0.0);
  // In more dimensions, a generated set that collapses onto one real point is precise but
  // covers little.
  const at::Tensor cloud = at::randn({400, 8}, at::kDouble);
  const at::Tensor collapsed = cloud.narrow(0, 0, 1).repeat({50, 1}) + 1e-3 * at::randn({50, 8}, at::kDouble);
  const PrecisionRecall mode = precision_recall(cloud, collapsed, 3);
  CHECK(mode.precision == 1.0);
  CHECK(mode.recall < 0.05);
}

TEST_CASE("the Inception Score is 1 for constant predictions and K for confident balanced ones", "[metrics][is]") {
  CHECK(inception_score(at::full({100, 10}, 0.1, at::kDouble), 10).mean == Approx(1.0));
  const at::Tensor one_hot = at::eye(5, at::kDouble).repeat({20, 1});
  const InceptionScore balanced = inception_score(one_hot, 4);
  CHECK(balanced.mean == Approx(5.0));
  CHECK(balanced.std == Approx(0.0).margin(1e-12));
  // Two samples: [0.9, 0.1] and [0.1, 0.9], marginal [0.5, 0.5].
  const at::Tensor p = at::tensor({0.9, 0.1, 0.1, 0.9}, at::kDouble).view({2, 2});
  const double kl = 0.9 * std::log(0.9 / 0.5) + 0.1 * std::log(0.1 / 0.5);
  CHECK(inception_score(p, 1).mean == Approx(std::exp(kl)).epsilon(1e-12));
  CHECK_THROWS_AS(inception_score(p, 3), ShapeError);
}
