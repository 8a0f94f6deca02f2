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

std::array<uint32_t, at::MERSENNE_STATE_N> mt19937_state_of_key(uint64_t key) {
  constexpr int n = at::MERSENNE_STATE_N;
  const uint32_t words[2] = {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
  std::array<uint32_t, n> mt{};
  mt[0] = 19650218u;
  for (int i = 1; i < n; ++i) mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + static_cast<uint32_t>(i);
  int i = 1, j = 0;
  for (int k = n; k > 0; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + words[j] + static_cast<uint32_t>(j);
    if (++i >= n) { mt[0] = mt[n - 1]; i = 1; }
    if (++j >= 2) j = 0;
  }
  for (int k = n - 1; k > 0; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
    if (++i >= n) { mt[0] = mt[n - 1]; i = 1; }
  }
  mt[0] = 0x80000000u;  // a non-zero state is assured
  return mt;
}

// LibTorch's CPU generator seeds its Mersenne Twister from the low 32 bits of a seed only, which
// would fold the 2^64 streams onto 2^32: among 50k samples two would share their noise about one
// time in four (birthday bound). The state is therefore set from all 64 bits, by the reference
// seeding of MT19937 with a key (init_by_array).
at::Generator sample_generator(uint64_t seed, uint64_t step, uint64_t index) {
  const uint64_t key = sample_seed(seed, step, index);
  at::Generator generator = at::detail::createCPUGenerator(key);
  at::mt19937 engine(key);
  at::mt19937_data_pod data = engine.data();
  data.state_ = mt19937_state_of_key(key);
  data.left_ = 1;  // the first draw twists the new state, as after LibTorch's own seeding
  data.next_ = 0;
  engine.set_data(data);
  generator.get<at::CPUGeneratorImpl>()->set_engine(engine);
  return generator;
}

}  // namespace ditlab
