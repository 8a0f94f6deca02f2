// The random choices made for each training sample, drawn from its own generator seeded by
// (seed, step, global sample index): see src/common/sample_rng.h for why.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ditlab {

struct SampleDraws {
  at::Tensor t;      // [N] int64 in [0, num_timesteps)
  at::Tensor noise;  // [N, C, H, W] float32
  at::Tensor drop;   // [N] bool: replace the label by the null class
  at::Tensor flip;   // [N] bool: mirror the image horizontally
  at::Tensor posterior_noise;  // [N, latent shape] float32: the autoencoder's posterior sample; or undefined
};

// Draws for global sample indices first_index .. first_index + count - 1 of optimizer step `step`.
// `pinned` allocates them in page-locked memory (CUDA builds), so that copies to the GPU can be
// asynchronous.
SampleDraws draw_for_samples(uint64_t seed, int64_t step, int64_t first_index, int64_t count,
                             int64_t num_timesteps, at::IntArrayRef image_shape,
                             double label_drop_prob, bool random_flip,
                             at::IntArrayRef posterior_shape = {}, bool pinned = false);

// Samples first .. first + count - 1 of `draws` (views).
SampleDraws slice_draws(const SampleDraws& draws, int64_t first, int64_t count);

}  // namespace ditlab
