#include "models/dim/selective_scan.h"

#include <ATen/ATen.h>

#include <vector>

#include "src/common/error.h"

namespace ditlab {

void check_selective_scan_shapes(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D) {
  const bool ok = u.dim() == 3 && delta.sizes() == u.sizes() && A.dim() == 2 &&
                  A.size(0) == u.size(1) && B.dim() == 3 && B.size(0) == u.size(0) &&
                  B.size(1) == A.size(1) && B.size(2) == u.size(2) && C.sizes() == B.sizes() &&
                  D.dim() == 1 && D.size(0) == u.size(1);
  if (!ok) {
    throw ShapeError("selective scan expects u, delta [b, d, L], A [d, n], B, C [b, n, L], D [d]");
  }
}

at::Tensor selective_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& B, const at::Tensor& C, const at::Tensor& D) {
  return u.device().is_cpu() ? selective_scan_fused_cpu(u, delta, A, B, C, D)
                             : selective_scan_chunked(u, delta, A, B, C, D);
}

at::Tensor selective_scan_sequential(const at::Tensor& u_in, const at::Tensor& delta_in,
                                     const at::Tensor& A, const at::Tensor& B_in,
                                     const at::Tensor& C_in, const at::Tensor& D) {
  check_selective_scan_shapes(u_in, delta_in, A, B_in, C_in, D);
  auto u = u_in.to(at::kFloat), delta = delta_in.to(at::kFloat);
  auto B = B_in.to(at::kFloat), C = C_in.to(at::kFloat);
  const int64_t length = u.size(2);
  auto h = at::zeros({u.size(0), u.size(1), A.size(1)}, u.options());  // [b, d, n]
  std::vector<at::Tensor> ys;
  for (int64_t l = 0; l < length; ++l) {
    auto dt = delta.select(2, l).unsqueeze(-1);                        // [b, d, 1]
    auto a = at::exp(dt * A.to(at::kFloat));                           // [b, d, n]
    auto b = dt * B.select(2, l).unsqueeze(1) * u.select(2, l).unsqueeze(-1);
    h = a * h + b;
    ys.push_back((h * C.select(2, l).unsqueeze(1)).sum(-1));           // [b, d]
  }
  auto y = at::stack(ys, 2) + D.to(at::kFloat).view({1, -1, 1}) * u;
  return y.to(u_in.scalar_type());
}

at::Tensor selective_scan_chunked(const at::Tensor& u_in, const at::Tensor& delta_in,
                                  const at::Tensor& A, const at::Tensor& B_in,
                                  const at::Tensor& C_in, const at::Tensor& D, int64_t chunk) {
  check_selective_scan_shapes(u_in, delta_in, A, B_in, C_in, D);
  DITLAB_ASSERT(chunk >= 1, "chunk must be positive");
  auto u = u_in.to(at::kFloat), delta = delta_in.to(at::kFloat);
  const int64_t batch = u.size(0), d = u.size(1), length = u.size(2), n = A.size(1);
  const int64_t chunks = (length + chunk - 1) / chunk, padded = chunks * chunk;
  // Per position: a = exp(delta A), b = delta B u, laid out [b, d, L, n]. Padding positions get
  // a = 1, b = 0 (they carry the state unchanged) and are cut off at the end.
  auto a = at::exp(delta.unsqueeze(-1) * A.to(at::kFloat).view({1, d, 1, n}));
  auto b = (delta * u).unsqueeze(-1) * B_in.to(at::kFloat).transpose(1, 2).unsqueeze(1);
  if (padded != length) {
    a = at::constant_pad_nd(a, {0, 0, 0, padded - length}, 1.0);
    b = at::constant_pad_nd(b, {0, 0, 0, padded - length}, 0.0);
  }
  a = a.view({batch, d, chunks, chunk, n});
  b = b.view({batch, d, chunks, chunk, n});
  // Inclusive scan within every chunk at once: after it, (a_l, b_l) maps the state before the
  // chunk to the state at position l.
  for (int64_t offset = 1; offset < chunk; offset *= 2) {
    auto a_prev = a.narrow(3, 0, chunk - offset), b_prev = b.narrow(3, 0, chunk - offset);
    auto a_cur = a.narrow(3, offset, chunk - offset), b_cur = b.narrow(3, offset, chunk - offset);
    b = at::cat({b.narrow(3, 0, offset), a_cur * b_prev + b_cur}, 3);
    a = at::cat({a.narrow(3, 0, offset), a_cur * a_prev}, 3);
  }
  // The state entering each chunk, chunk by chunk.
  std::vector<at::Tensor> carries;
  auto carry = at::zeros({batch, d, n}, u.options());
  for (int64_t c = 0; c < chunks; ++c) {
    carries.push_back(carry);
    carry = a.select(2, c).select(2, chunk - 1) * carry + b.select(2, c).select(2, chunk - 1);
  }
  auto entering = at::stack(carries, 2).unsqueeze(3);              // [b, d, chunks, 1, n]
  auto h = (a * entering + b).view({batch, d, padded, n}).narrow(2, 0, length);
  auto y = (h * C_in.to(at::kFloat).transpose(1, 2).unsqueeze(1)).sum(-1);  // [b, d, L]
  y = y + D.to(at::kFloat).view({1, -1, 1}) * u;
  return y.to(u_in.scalar_type());
}

}  // namespace ditlab
