#include "models/dim/selective_scan.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>
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

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// h_l = a_l h_{l-1} + b_l along dim 2 of [batch, d, L, n] tensors, starting from h = 0 (with
// `reverse`, from the end: h_l = a_l h_{l+1} + b_l). With `readout` ([batch, 1, L, n]) it
// returns sum_n h_l readout_l ([batch, d, L]) without keeping the states (readout may also be
// [batch, d, L, n]). Blocked, so that each
// pass over the data is a few large elementwise operations and the [batch, d, L, n] tensors are
// read and written as few times as possible (on a GPU the scan is bound by memory traffic):
//   1. within each chunk of `chunk` positions, all chunks at once, one position at a time: the
//      chunk's own end state (from 0) and the product of its a's;
//   2. chunk by chunk, the state entering each chunk;
//   3. within each chunk again, all chunks at once, the states from the entering one (or, with
//      `readout`, each position's output, the states dropped as it goes).
// That reads b twice and a three times and writes h once (not at all with `readout`), where a
// Hillis-Steele scan inside the chunks makes about five whole-tensor passes per doubling of the
// span; a length that is not a multiple of `chunk` costs one padded copy of a and b. Every factor is a
// product of the a's, so nothing overflows where the a's are at most 1.
at::Tensor linear_recurrence(at::Tensor a, at::Tensor b, int64_t chunk, bool reverse = false,
                             at::Tensor readout = {}) {
  const int64_t batch = a.size(0), d = a.size(1), length = a.size(2), n = a.size(3);
  chunk = std::max<int64_t>(1, std::min(chunk, length));
  const int64_t chunks = (length + chunk - 1) / chunk, padded = chunks * chunk;
  // Padding positions get a = 1, b = 0. They sit at the end: going forward they carry the state
  // past the end unchanged; going backward they come first and leave the zero state at zero.
  if (padded != length) {
    a = at::constant_pad_nd(a, {0, 0, 0, padded - length}, 1.0);
    b = at::constant_pad_nd(b, {0, 0, 0, padded - length}, 0.0);
    if (readout.defined()) readout = at::constant_pad_nd(readout, {0, 0, 0, padded - length}, 0.0);
  }
  a = a.reshape({batch, d, chunks, chunk, n});
  b = b.reshape({batch, d, chunks, chunk, n});
  auto position = [&](int64_t i) { return reverse ? chunk - 1 - i : i; };  // i-th step of a chunk

  auto end_state = b.select(3, position(0)).clone();  // [b, d, chunks, n]
  for (int64_t i = 1; i < chunk; ++i) {
    end_state = at::addcmul(b.select(3, position(i)), a.select(3, position(i)), end_state);
  }
  const auto decay = a.prod(3);  // [b, d, chunks, n]

  auto entering = at::empty_like(end_state);
  auto state = at::zeros({batch, d, n}, a.options());
  for (int64_t j = 0; j < chunks; ++j) {
    const int64_t c = reverse ? chunks - 1 - j : j;
    entering.select(2, c).copy_(state);
    state = at::addcmul(end_state.select(2, c), decay.select(2, c), state);
  }

  if (readout.defined()) {
    readout = readout.reshape({batch, readout.size(1), chunks, chunk, n});
    auto y = at::empty({batch, d, chunks, chunk}, b.options());
    at::Tensor previous = entering;
    for (int64_t i = 0; i < chunk; ++i) {
      const int64_t p = position(i);
      previous = at::addcmul(b.select(3, p), a.select(3, p), previous);
      auto out = y.select(3, p);
      at::sum_out(out, previous * readout.select(3, p), at::IntArrayRef{-1});
    }
    return y.view({batch, d, padded}).narrow(2, 0, length);
  }
  auto h = at::empty({batch, d, chunks, chunk, n}, b.options());
  at::Tensor previous = entering;
  for (int64_t i = 0; i < chunk; ++i) {
    auto out = h.select(3, position(i));
    at::addcmul_out(out, b.select(3, position(i)), a.select(3, position(i)), previous);
    previous = out;
  }
  return h.view({batch, d, padded, n}).narrow(2, 0, length);
}

// The operands in float32, and the per-position factors of the recurrence laid out
// [b, d, L, n]: decay = exp(delta A), input = delta u B.
struct ScanTerms {
  at::Tensor u, delta, A, Bt, Ct, D;  // Bt, Ct: [b, 1, L, n]
  at::Tensor decay, input;
};
ScanTerms scan_terms(const variable_list& in) {
  ScanTerms t;
  t.u = in[0].to(at::kFloat);
  t.delta = in[1].to(at::kFloat);
  t.A = in[2].to(at::kFloat);
  // [b, L, n] laid out with n innermost, so that the [b, d, L, n] products below are too: the
  // recurrence reads them one position at a time, n values together.
  t.Bt = in[3].to(at::kFloat).transpose(1, 2).contiguous().unsqueeze(1);
  t.Ct = in[4].to(at::kFloat).transpose(1, 2).contiguous().unsqueeze(1);
  t.D = in[5].to(at::kFloat);
  t.decay = at::exp(t.delta.unsqueeze(-1) * t.A.view({1, t.A.size(0), 1, t.A.size(1)}));
  t.input = (t.delta * t.u).unsqueeze(-1) * t.Bt;
  return t;
}

// Autograd would keep every step of the chunked scan for backward (several [b, d, L, n] tensors
// per block). This keeps only the inputs, and backward runs two recurrences of the same kind:
// the states again, and the gradients from the end, g_l = dy_l C_l + a_{l+1} g_{l+1}.
struct ChunkedScanFunction : public torch::autograd::Function<ChunkedScanFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta,
                            const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                            const at::Tensor& D, int64_t chunk) {
    ctx->save_for_backward({u, delta, A, B, C, D});
    ctx->saved_data["chunk"] = chunk;
    const auto t = scan_terms({u, delta, A, B, C, D});
    const auto y = linear_recurrence(t.decay, t.input, chunk, /*reverse=*/false, /*readout=*/t.Ct);
    return (y + t.D.view({1, -1, 1}) * t.u).to(u.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto t = scan_terms(saved);
    const int64_t length = t.u.size(2);
    const auto dy = grad_outputs[0].to(at::kFloat);
    const auto h = linear_recurrence(t.decay, t.input, chunk);
    // a_{l+1} for l < L-1; nothing reaches the last position from beyond it.
    const auto next_decay = at::constant_pad_nd(t.decay.narrow(2, 1, length - 1), {0, 0, 0, 1}, 0.0);
    const auto g = linear_recurrence(next_decay, dy.unsqueeze(-1) * t.Ct, chunk, /*reverse=*/true);
    const auto h_before = at::constant_pad_nd(h.narrow(2, 0, length - 1), {0, 0, 1, 0}, 0.0);
    const auto grad_decay_times_decay = g * h_before * t.decay;  // (d loss / d a_l) a_l
    const auto g_dot_B = (g * t.Bt).sum(-1);                     // [b, d, L]
    const std::vector<at::Tensor> grads{
        t.D.view({1, -1, 1}) * dy + t.delta * g_dot_B,                                   // u
        (grad_decay_times_decay * t.A.unsqueeze(1)).sum(-1) + t.u * g_dot_B,            // delta
        (grad_decay_times_decay * t.delta.unsqueeze(-1)).sum(at::IntArrayRef{0, 2}),                    // A
        (g * (t.delta * t.u).unsqueeze(-1)).sum(1).transpose(1, 2),                      // B
        (h * dy.unsqueeze(-1)).sum(1).transpose(1, 2),                                   // C
        (dy * t.u).sum(at::IntArrayRef{0, 2})};                                                         // D
    variable_list out;
    for (size_t i = 0; i < grads.size(); ++i) out.push_back(grads[i].to(saved[i].scalar_type()));
    out.emplace_back();  // chunk
    return out;
  }
};

}  // namespace

at::Tensor selective_scan_chunked(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                  const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                  int64_t chunk) {
  check_selective_scan_shapes(u, delta, A, B, C, D);
  DITLAB_ASSERT(chunk >= 1, "chunk must be positive");
  return ChunkedScanFunction::apply(u, delta, A, B, C, D, chunk);
}

}  // namespace ditlab
