// The selective state-space scan of Mamba (v1), as DiM uses it:
//   h_l = exp(delta_l * A) h_{l-1} + delta_l * B_l * u_l        (h: [batch, d, n] per position)
//   y_l = <C_l, h_l> + D * u_l
// Shapes follow mamba_ssm's selective_scan_fn: u, delta [b, d, L]; A [d, n]; B, C [b, n, L];
// D [d]. Returns y [b, d, L].
#pragma once
#include <ATen/core/Tensor.h>

namespace ditlab {

// Throws ShapeError unless the six operands have the shapes above.
void check_selective_scan_shapes(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D);

// What the Mamba mixer calls: the fused loops on CPUs, the chunked tensor ops elsewhere.
at::Tensor selective_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& B, const at::Tensor& C, const at::Tensor& D);

// The definition, one position at a time (the reference the fast scans are tested against).
at::Tensor selective_scan_sequential(const at::Tensor& u, const at::Tensor& delta,
                                     const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                     const at::Tensor& D);

// Chunked: h_l = a_l h_{l-1} + b_l in chunks of `chunk` positions, all chunks at once, one
// position at a time: each chunk's end state and decay, then the states entering the chunks
// (L / chunk small steps), then the states, reading the [b, d, L, n] factors two or three
// times and writing the states once (about 2 x chunk + 2 x L / chunk elementwise calls, each
// over 1 / chunk of the data); forward takes each position's output as it goes instead of
// keeping the states. Every factor is a product of
// exp(delta * A) <= 1, so nothing overflows whatever delta is (unlike cumulative sums of
// delta * A in log space). Computed in fp32, on any device. An autograd Function that keeps
// only its inputs for backward, where autograd through the scan's steps would keep several
// [b, d, L, n] tensors per call: backward computes the states again and runs the gradients'
// recurrence, g_l = dy_l C_l + exp(delta_{l+1} A) g_{l+1}, from the end with the same scan. Not
// twice differentiable (its backward writes into preallocated tensors).
at::Tensor selective_scan_chunked(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                  const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                  int64_t chunk = 16);

// CPU only: one loop over the sequence per (batch, channel) row, the state in registers, and a
// backward written by hand that recomputes a row's states and runs the gradients' recurrence in
// reverse (selective_scan_fused.cpp). Keeps only its inputs for backward, where the chunked scan
// keeps [b, d, L, n] tensors per step. Computed in fp32 (fp64 for fp64 inputs); not twice
// differentiable.
at::Tensor selective_scan_fused_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                    const at::Tensor& B, const at::Tensor& C, const at::Tensor& D);

}  // namespace ditlab
