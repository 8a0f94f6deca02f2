#include "trainers/sample_draws.h"

#include <ATen/ATen.h>

#include "src/common/sample_rng.h"

namespace ditlab {

SampleDraws draw_for_samples(uint64_t seed, int64_t step, int64_t first_index, int64_t count,
                             int64_t num_timesteps, at::IntArrayRef image_shape,
                             double label_drop_prob, bool random_flip,
                             at::IntArrayRef posterior_shape, bool pinned) {
  const auto host = at::TensorOptions().pinned_memory(pinned);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);  // for the generators' own draws
  std::vector<int64_t> noise_shape{count};
  noise_shape.insert(noise_shape.end(), image_shape.begin(), image_shape.end());
  SampleDraws d{at::empty({count}, host.dtype(at::kLong)), at::empty(noise_shape, host.dtype(at::kFloat)),
                at::empty({count}, host.dtype(at::kBool)), at::empty({count}, host.dtype(at::kBool)),
                at::Tensor()};
  auto* t = d.t.data_ptr<int64_t>();
  auto* drop = d.drop.data_ptr<bool>();
  auto* flip = d.flip.data_ptr<bool>();
  if (!posterior_shape.empty()) {
    std::vector<int64_t> shape{count};
    shape.insert(shape.end(), posterior_shape.begin(), posterior_shape.end());
    d.posterior_noise = at::empty(shape, host.dtype(at::kFloat));
  }
  for (int64_t i = 0; i < count; ++i) {
    auto gen = sample_generator(seed, static_cast<uint64_t>(step),
                                static_cast<uint64_t>(first_index + i));
    // Fixed order of draws per sample: timestep, two uniforms, the noise, the posterior noise.
    t[i] = at::randint(num_timesteps, {1}, gen, at::TensorOptions().dtype(at::kLong)).item<int64_t>();
    auto u = at::rand({2}, gen, f32);
    drop[i] = u[0].item<float>() < label_drop_prob;
    flip[i] = random_flip && u[1].item<float>() < 0.5f;
    d.noise[i].copy_(at::randn(image_shape, gen, f32));
    if (d.posterior_noise.defined()) d.posterior_noise[i].copy_(at::randn(posterior_shape, gen, f32));
  }
  return d;
}

SampleDraws slice_draws(const SampleDraws& d, int64_t first, int64_t count) {
  return {d.t.narrow(0, first, count), d.noise.narrow(0, first, count), d.drop.narrow(0, first, count),
          d.flip.narrow(0, first, count),
          d.posterior_noise.defined() ? d.posterior_noise.narrow(0, first, count) : at::Tensor()};
}

}  // namespace ditlab
