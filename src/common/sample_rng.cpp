#include "src/common/sample_rng.h"

#include <ATen/CPUGeneratorImpl.h>

namespace ditlab {

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t sample_seed(uint64_t seed, uint64_t step, uint64_t index) {
  return splitmix64(splitmix64(splitmix64(seed) ^ step) ^ index);
}

at::Generator sample_generator(uint64_t seed, uint64_t step, uint64_t index) {
  return at::detail::createCPUGenerator(sample_seed(seed, step, index));
}

}  // namespace ditlab
