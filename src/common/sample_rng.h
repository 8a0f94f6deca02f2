// Per-sample randomness: every random choice about one training sample (its timestep, its noise,
// whether its label is dropped, whether it is flipped) comes from a generator seeded by
// (seed, step, global sample index). A result therefore does not depend on how a global batch is
// split into micro-batches or ranks, and resuming at any step replays the same choices.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/core/MT19937RNGEngine.h>

#include <array>
#include <cstdint>

namespace ditlab {

// `step` values reserved for the streams that are not a training step's (steps near 2^64 are
// never reached): the epoch order (index: the epoch), the posterior draws of `dit encode
// --store sample` (minus the orientation, 0 or 1; index: the image) and sampling (index: the
// sample's number).
constexpr uint64_t kEpochOrderStream = ~uint64_t{0};
constexpr uint64_t kEncodingStream = ~uint64_t{0} - 1;
constexpr uint64_t kSamplingStream = ~uint64_t{0} - 16;

// Names how the streams are made; checkpoints record it ("random_streams"), so that a run is not
// resumed by a ditlab that would draw other choices (before 2026-11-27 the generators were seeded
// from 32 bits of sample_seed).
constexpr const char* kRandomStreams = "splitmix64-mt19937-64bit";

// A 64-bit seed mixing the three coordinates (SplitMix64 finaliser, so nearby inputs give
// unrelated seeds).
uint64_t sample_seed(uint64_t seed, uint64_t step, uint64_t index);

// A fresh CPU generator whose Mersenne Twister state is set from all 64 bits of
// sample_seed(seed, step, index).
at::Generator sample_generator(uint64_t seed, uint64_t step, uint64_t index);

// MT19937's state after the reference init_by_array with the key {low 32 bits, high 32 bits}
// (as numpy's RandomState([low, high]) seeds it).
std::array<uint32_t, at::MERSENNE_STATE_N> mt19937_state_of_key(uint64_t key);

}  // namespace ditlab
