#include "models/layers/rope2d.h"

#include <ATen/ATen.h>

#include "src/common/error.h"

namespace ditlab {

at::Tensor rope2d_angles(int64_t head_dim, int64_t side, const at::TensorOptions& options,
                         double theta) {
  if (head_dim % 4 != 0) {
    throw ShapeError("2-D RoPE needs a head dimension divisible by 4 (got " +
                     std::to_string(head_dim) + ")");
  }
  auto fp32 = options.dtype(at::kFloat);
  auto index = at::arange(side * side, fp32);
  auto x = at::fmod(index, static_cast<double>(side));      // column
  auto y = at::floor_divide(index, static_cast<double>(side));  // row
  auto f = at::arange(head_dim / 4, fp32);
  auto freqs = at::pow(theta, -4.0 * f / static_cast<double>(head_dim));  // [hd/4]
  auto x_angles = at::outer(x, freqs), y_angles = at::outer(y, freqs);   // [N, hd/4]
  return at::stack({x_angles, y_angles}, -1).reshape({side * side, head_dim / 2});
}

at::Tensor apply_rope2d(const at::Tensor& x, const at::Tensor& angles) {
  auto pairs = x.to(at::kFloat).unflatten(-1, {x.size(-1) / 2, 2});  // [..., N, hd/2, 2]
  auto even = pairs.select(-1, 0), odd = pairs.select(-1, 1);
  auto cos = angles.cos(), sin = angles.sin();
  auto rotated = at::stack({even * cos - odd * sin, even * sin + odd * cos}, -1);
  return rotated.flatten(-2).to(x.scalar_type());
}

}  // namespace ditlab
