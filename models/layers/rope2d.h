// 2-D rotary position embedding as U-DiT uses it (its precompute_freqs_cis_2d and
// apply_rotary_emb): a token at column x, row y of a side x side grid (index = y * side + x)
// rotates its channel pairs (2m, 2m+1); pair 2f turns by x * w_f and pair 2f+1 by y * w_f, with
// w_f = theta^(-4f / head_dim), f = 0 .. head_dim/4 - 1 (x and y interleaved per frequency).
#pragma once
#include <ATen/core/Tensor.h>

namespace ditlab {

// The rotation angles, [side * side, head_dim / 2], in fp32 on `options`' device.
at::Tensor rope2d_angles(int64_t head_dim, int64_t side, const at::TensorOptions& options,
                         double theta = 10000.0);

// Rotates x [..., N, head_dim] by angles [N, head_dim / 2]; computed in fp32, returned in x's dtype.
at::Tensor apply_rope2d(const at::Tensor& x, const at::Tensor& angles);

}  // namespace ditlab
