// Per-sample randomness: every random choice about one training sample (its timestep, its noise,
// whether its label is dropped, whether it is flipped) comes from a generator seeded by
// (seed, step, global sample index). A result therefore does not depend on how a global batch is
// split into micro-batches or ranks, and resuming at any step replays the same choices.
#pragma once
#include <ATen/core/Generator.h>

#include <cstdint>

namespace ditlab {

// `step` values reserved for the streams that are not a training step's (steps near 2^64 are
// never reached): the epoch order (index: the epoch), the posterior draws of `dit encode
// --store sample` (minus the orientation, 0 or 1; index: the image) and sampling (index: the
// sample's number).
constexpr uint64_t kEpochOrderStream = ~uint64_t{0};
constexpr uint64_t kEncodingStream = ~uint64_t{0} - 1;
constexpr uint64_t kSamplingStream = ~uint64_t{0} - 16;

// A 64-bit seed mixing the three coordinates (SplitMix64 finaliser, so nearby inputs give
// unrelated seeds).
uint64_t sample_seed(uint64_t seed, uint64_t step, uint64_t index);

// A fresh CPU generator seeded with sample_seed(seed, step, index).
at::Generator sample_generator(uint64_t seed, uint64_t step, uint64_t index);

}  // namespace ditlab
