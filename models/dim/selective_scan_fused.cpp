// The selective scan on CPUs as two loops over the sequence, one per (batch, channel) row, with
// a backward written by hand. The chunked tensor-op scan materialises [b, d, L, n] tensors for
// every step of its parallel prefix; here the state of one row (n numbers) stays in a small
// buffer that the cache holds, forward keeps nothing but its inputs, and backward
// recomputes the row's states into a buffer of L x n numbers (23 KB for DiM-S at 256 px) before
// running the recurrence of the gradients backwards:
//   g_l = dy_l C_l + a_{l+1} g_{l+1}        (g_l = d loss / d h_l)
//   with a_l = exp(delta_l A), b_l = delta_l B_l u_l, h_l = a_l h_{l-1} + b_l:
//   d a_l = g_l h_{l-1},  d b_l = g_l,  d delta_l = sum_n (d a_l a_l A + g_l B_l u_l),
//   d A += d a_l a_l delta_l,  d B_l += g_l delta_l u_l,  d u_l = sum_n g_l delta_l B_l + D dy_l,
//   d C_l += dy_l h_l,  d D += dy_l u_l.
// B and C are shared by all channels of a sample, so each thread sums its channels' share of
// their gradients in a buffer of its own (threads x b x L x n numbers), added up at the end (no
// two threads write one number).
#include "models/dim/selective_scan.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "src/common/error.h"

namespace ditlab {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Raw pointers to the contiguous operands of one scan; B and C laid out [b, L, n] so that a
// position's n numbers are adjacent.
template <class T>
struct ScanOperands {
  const T *u, *delta, *A, *B, *C, *D;
  int64_t batch, d, length, n;
};

// exp in plain arithmetic, so that the compiler can vectorise the loops that call it (glibc's
// expf is a call it cannot, and the scan spends most of its time in exp): x = k ln2 + r with k the
// nearest integer and |r| <= ln2/2 (ln2 in two parts, after Cody and Waite), exp(r) by Cephes'
// polynomial for expf, 2^k written into the exponent bits. Within 2 ulp of expf where that is a
// normal number (from -87.3 on); subnormal or 0 below, 0 below -87.7; inf from 88.4 on; NaN stays
// NaN. The scan's arguments, delta A, are never positive. (This file is compiled with
// -fno-trapping-math, without which GCC does not vectorise the comparisons.)
inline float exp_in_arithmetic(float x) {
  x = x < -88.0f ? -88.0f : x;  // k >= -127: 2^k is 0 or normal
  x = x > 89.0f ? 89.0f : x;    // k <= 128: 2^128 is inf
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;  // NaN for a NaN x
  const float k_finite = k == k ? k : 0.0f;  // converting NaN to an integer is undefined
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(k_finite) + 127) << 23;
  float two_to_k;
  std::memcpy(&two_to_k, &bits, sizeof two_to_k);
  return p * two_to_k;
}
inline double exp_in_arithmetic(double x) { return std::exp(x); }  // float64 (tests) as the library

// One position of one row: decay = exp(delta A), h = decay h + delta u B (h in place). The
// pointers never overlap, which lets the compiler vectorise the loop over the n states.
template <class T>
inline void advance_state(int64_t n, T dt, T dt_x, const T* __restrict A, const T* __restrict B,
                          T* __restrict decay, T* __restrict h_in, T* __restrict h_out) {
  for (int64_t k = 0; k < n; ++k) decay[k] = exp_in_arithmetic(dt * A[k]);
  for (int64_t k = 0; k < n; ++k) h_out[k] = decay[k] * h_in[k] + dt_x * B[k];
}

template <class T>
inline T dot(int64_t n, const T* a, const T* b) {
  T sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

template <class T>
void scan_forward_rows(const ScanOperands<T>& s, T* y) {
  at::parallel_for(0, s.batch * s.d, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> h(s.n), next(s.n), decay(s.n);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / s.d, c = row % s.d;
      const T* u = s.u + row * s.length;
      const T* delta = s.delta + row * s.length;
      const T* A = s.A + c * s.n;
      std::fill(h.begin(), h.end(), T(0));
      for (int64_t l = 0; l < s.length; ++l) {
        const T dt = delta[l], x = u[l];
        const T* B = s.B + (b * s.length + l) * s.n;
        const T* C = s.C + (b * s.length + l) * s.n;
        advance_state(s.n, dt, dt * x, A, B, decay.data(), h.data(), next.data());
        h.swap(next);
        y[row * s.length + l] = dot(s.n, C, h.data()) + s.D[c] * x;
      }
    }
  });
}

// One position of one row in reverse. In: carry = a_{l+1} g_{l+1} (the gradient reaching h_l
// through h_{l+1}). Adds this position's shares to dA (the channel's row), dB and dC (the
// position's n numbers in the thread's buffers; dA in double, as it sums batch x L terms one at a
// time), leaves carry = a_l g_l and g_l in `g`, and
// grad_decay_times_decay = (d loss / d a_l) a_l, for the sums over the states that follow.
template <class T>
inline void reverse_step(int64_t n, T grad_y, T dt, T dt_x, const T* __restrict C,
                         const T* __restrict h_before, const T* __restrict h_after,
                         const T* __restrict decay, T* __restrict carry, T* __restrict g,
                         T* __restrict grad_decay_times_decay, double* __restrict dA,
                         T* __restrict dB, T* __restrict dC) {
  for (int64_t k = 0; k < n; ++k) {
    const T g_l = carry[k] + grad_y * C[k];
    const T gd = g_l * h_before[k] * decay[k];
    dC[k] += grad_y * h_after[k];
    dA[k] += gd * dt;
    dB[k] += g_l * dt_x;
    carry[k] = g_l * decay[k];
    g[k] = g_l;
    grad_decay_times_decay[k] = gd;
  }
}

struct ScanGradients {
  at::Tensor u, delta, A, B, C, D;
};

template <class T>
void scan_backward_rows(const ScanOperands<T>& s, const T* dy, ScanGradients& g) {
  // Channels are split into contiguous blocks, one per thread; dA and dD belong to one channel
  // each, so a block owns its rows of them; dB and dC are summed per block.
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), s.d));
  auto partial_B = at::zeros({blocks, s.batch, s.length, s.n}, g.u.options());
  auto partial_C = at::zeros({blocks, s.batch, s.length, s.n}, g.u.options());
  T* du = g.u.template data_ptr<T>();
  T* ddelta = g.delta.template data_ptr<T>();
  T* dA = g.A.template data_ptr<T>();
  T* dD = g.D.template data_ptr<T>();
  T* pB = partial_B.template data_ptr<T>();
  T* pC = partial_C.template data_ptr<T>();
  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    // a[l n + k] = exp(delta_l A_k); h[(l + 1) n + k] the state after position l, h[k] = 0 the
    // state before the first.
    std::vector<T> a(s.length * s.n), h((s.length + 1) * s.n), carry(s.n), g_l(s.n), gd(s.n);
    std::vector<double> dA_channel(s.n);
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t c_begin = block * s.d / blocks, c_end = (block + 1) * s.d / blocks;
      T* block_dB = pB + block * s.batch * s.length * s.n;
      T* block_dC = pC + block * s.batch * s.length * s.n;
      for (int64_t c = c_begin; c < c_end; ++c) {
        const T* A = s.A + c * s.n;
        std::fill(dA_channel.begin(), dA_channel.end(), 0.0);
        double dD_channel = 0;
        for (int64_t b = 0; b < s.batch; ++b) {
          const int64_t row = b * s.d + c;
          const T* u = s.u + row * s.length;
          const T* delta = s.delta + row * s.length;
          const T* Bs = s.B + b * s.length * s.n;
          const T* Cs = s.C + b * s.length * s.n;
          std::fill(h.begin(), h.begin() + s.n, T(0));
          for (int64_t l = 0; l < s.length; ++l) {
            advance_state(s.n, delta[l], delta[l] * u[l], A, Bs + l * s.n, a.data() + l * s.n,
                          h.data() + l * s.n, h.data() + (l + 1) * s.n);
          }
          std::fill(carry.begin(), carry.end(), T(0));  // nothing reaches past the end
          for (int64_t l = s.length - 1; l >= 0; --l) {
            const T dt = delta[l], x = u[l], grad_y = dy[row * s.length + l];
            const T* B = Bs + l * s.n;
            reverse_step(s.n, grad_y, dt, dt * x, Cs + l * s.n, h.data() + l * s.n,
                         h.data() + (l + 1) * s.n, a.data() + l * s.n, carry.data(), g_l.data(),
                         gd.data(), dA_channel.data(), block_dB + (b * s.length + l) * s.n,
                         block_dC + (b * s.length + l) * s.n);
            // d delta_l = sum_k (d a_l a_l A + g_l B u),  d u_l = D dy_l + delta_l sum_k g_l B.
            const T g_dot_B = dot(s.n, g_l.data(), B);
            ddelta[row * s.length + l] = dot(s.n, gd.data(), A) + x * g_dot_B;
            du[row * s.length + l] = s.D[c] * grad_y + dt * g_dot_B;
            dD_channel += static_cast<double>(grad_y) * x;
          }
        }
        for (int64_t k = 0; k < s.n; ++k) dA[c * s.n + k] = static_cast<T>(dA_channel[k]);
        dD[c] = static_cast<T>(dD_channel);
      }
    }
  });
  g.B = partial_B.sum(0).transpose(1, 2);  // [b, n, L]
  g.C = partial_C.sum(0).transpose(1, 2);
}

// The operands in the compute dtype (double stays double, everything else runs in float, as
// the chunked scan does), contiguous, B and C transposed to [b, L, n].
std::vector<at::Tensor> compute_operands(const variable_list& in) {
  const auto dtype = in[0].scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < in.size(); ++i) {
    auto t = in[i].detach().to(dtype);
    if (i == 3 || i == 4) t = t.transpose(1, 2);
    out.push_back(t.contiguous());
  }
  return out;
}

template <class T>
ScanOperands<T> operands_of(const std::vector<at::Tensor>& t) {
  return {t[0].data_ptr<T>(), t[1].data_ptr<T>(), t[2].data_ptr<T>(), t[3].data_ptr<T>(),
          t[4].data_ptr<T>(), t[5].data_ptr<T>(), t[0].size(0), t[0].size(1), t[0].size(2),
          t[2].size(1)};
}

struct FusedScanFunction : public torch::autograd::Function<FusedScanFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta,
                            const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                            const at::Tensor& D) {
    ctx->save_for_backward({u, delta, A, B, C, D});
    const auto t = compute_operands({u, delta, A, B, C, D});
    auto y = at::empty(t[0].sizes(), t[0].options());
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "selective_scan_fused", [&] {
      scan_forward_rows(operands_of<scalar_t>(t), y.data_ptr<scalar_t>());
    });
    return y.to(u.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto t = compute_operands(saved);
    const auto dy = grad_outputs[0].to(t[0].scalar_type()).contiguous();
    ScanGradients g;
    g.u = at::empty(t[0].sizes(), t[0].options());
    g.delta = at::empty(t[1].sizes(), t[1].options());
    g.A = at::empty(t[2].sizes(), t[2].options());  // every channel's row is written once
    g.D = at::empty(t[5].sizes(), t[5].options());
    AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "selective_scan_fused_backward", [&] {
      scan_backward_rows(operands_of<scalar_t>(t), dy.data_ptr<scalar_t>(), g);
    });
    const std::vector<at::Tensor> grads{g.u, g.delta, g.A, g.B, g.C, g.D};
    variable_list out;
    for (size_t i = 0; i < grads.size(); ++i) out.push_back(grads[i].to(saved[i].scalar_type()));
    return out;
  }
};

}  // namespace

at::Tensor selective_scan_fused_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                    const at::Tensor& B, const at::Tensor& C, const at::Tensor& D) {
  check_selective_scan_shapes(u, delta, A, B, C, D);
  for (const auto* t : {&u, &delta, &A, &B, &C, &D}) {
    if (!t->device().is_cpu()) {
      throw ShapeError("selective_scan_fused_cpu runs on CPU tensors only; got one on " + t->device().str());
    }
  }
  return FusedScanFunction::apply(u, delta, A, B, C, D);
}

}  // namespace ditlab
