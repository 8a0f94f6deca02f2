// Beta schedules and timestep respacing (float64 throughout, as in the reference code).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ditlab {

// "linear": linspace(s*beta_start, s*beta_end, T) with s = 1000/T (so any T keeps the same
// total noise as the 1000-step schedule). "cosine": improved DDPM's squaredcos_cap_v2, max 0.999.
std::vector<double> make_betas(const std::string& schedule, int64_t num_timesteps,
                               double beta_start = 1e-4, double beta_end = 0.02);

// The original timesteps kept by a respaced process, sorted ascending. `spec` is a count
// ("250": evenly spaced, always including 0 and T-1), "ddimN" (integer stride) or a
// comma-separated list of counts per equal section ("10,15,20").
std::vector<int64_t> space_timesteps(int64_t num_timesteps, const std::string& spec);

// Betas of the respaced process: beta'_i = 1 - abar[k_i] / abar[k_{i-1}] (abar before the first
// kept step is 1).
std::vector<double> respace_betas(const std::vector<double>& betas,
                                  const std::vector<int64_t>& kept);

}  // namespace ditlab
