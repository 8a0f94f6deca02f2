// Per-sample randomness: every random choice about one training sample (its timestep, its noise,
// whether its label is dropped, whether it is flipped) comes from a generator seeded by
// (seed, step, global sample index). A result therefore does not depend on how a global batch is
// split into micro-batches or ranks, and resuming at any step replays the same choices.
#pragma once
#include <ATen/core/Generator.h>

#include <cstdint>

namespace ditlab {

// A 64-bit seed mixing the three coordinates (SplitMix64 finaliser, so nearby inputs give
// unrelated seeds).
uint64_t sample_seed(uint64_t seed, uint64_t step, uint64_t index);

// A fresh CPU generator seeded with sample_seed(seed, step, index).
at::Generator sample_generator(uint64_t seed, uint64_t step, uint64_t index);

}  // namespace ditlab
