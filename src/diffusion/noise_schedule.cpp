#include "src/diffusion/noise_schedule.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "src/common/error.h"

namespace ditlab {

std::vector<double> make_betas(const std::string& schedule, int64_t num_timesteps,
                               double beta_start, double beta_end) {
  if (num_timesteps < 1) throw ConfigError("diffusion.steps must be >= 1");
  std::vector<double> betas(num_timesteps);
  if (schedule == "linear") {
    double scale = 1000.0 / static_cast<double>(num_timesteps);
    // One step uses beta_start only (np.linspace(lo, hi, 1) = [lo]).
    double lo = scale * beta_start, hi = num_timesteps == 1 ? lo : scale * beta_end;
    // A beta of 1 destroys the signal entirely (alpha_bar = 0: x0 from x_t divides by zero).
    if (hi >= 1.0 || lo >= 1.0) {
      const std::string key = hi >= lo ? "beta_end" : "beta_start";
      throw ConfigError("the linear schedule rescales betas by 1000 / diffusion.steps: diffusion." + key + " " +
                        std::to_string(hi >= lo ? beta_end : beta_start) + " at diffusion.steps " +
                        std::to_string(num_timesteps) + " gives a beta of " + std::to_string(std::max(lo, hi)) +
                        ", expected < 1; use more steps or a smaller " + key);
    }
    for (int64_t i = 0; i < num_timesteps; ++i) {
      betas[i] = num_timesteps == 1 ? lo : lo + (hi - lo) * static_cast<double>(i) /
                                                    static_cast<double>(num_timesteps - 1);
    }
  } else if (schedule == "scaled_linear") {
    // Stable Diffusion's (DiM's recipe): linear in sqrt(beta), no rescaling with T.
    const double lo = std::sqrt(beta_start), hi = std::sqrt(beta_end);
    for (int64_t i = 0; i < num_timesteps; ++i) {
      const double s = num_timesteps == 1 ? lo : lo + (hi - lo) * static_cast<double>(i) /
                                                         static_cast<double>(num_timesteps - 1);
      betas[i] = s * s;
    }
  } else if (schedule == "cosine") {
    auto alpha_bar = [](double t) {
      return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2.0), 2.0);
    };
    for (int64_t i = 0; i < num_timesteps; ++i) {
      double t1 = static_cast<double>(i) / num_timesteps;
      double t2 = static_cast<double>(i + 1) / num_timesteps;
      betas[i] = std::min(1.0 - alpha_bar(t2) / alpha_bar(t1), 0.999);
    }
  } else {
    throw ConfigError("diffusion.schedule '" + schedule + "' is unknown; expected linear, scaled_linear or cosine");
  }
  return betas;
}

std::vector<int64_t> space_timesteps(int64_t num_timesteps, const std::string& spec) {
  auto bad = [&](const std::string& why) {
    return ConfigError("timestep respacing '" + spec + "' for " + std::to_string(num_timesteps) +
                       " steps: " + why);
  };
  auto parse_count = [&](const std::string& text) -> int64_t {
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size()) {
      throw bad("expected a count such as 250, a list such as 10,15,20, or ddimN");
    }
    return value;
  };
  if (spec.rfind("ddim", 0) == 0) {
    int64_t desired = parse_count(spec.substr(4));
    for (int64_t stride = 1; stride < num_timesteps; ++stride) {
      std::vector<int64_t> kept;
      for (int64_t t = 0; t < num_timesteps; t += stride) kept.push_back(t);
      if (static_cast<int64_t>(kept.size()) == desired) return kept;
    }
    throw bad("no integer stride gives exactly " + std::to_string(desired) + " steps");
  }
  std::vector<int64_t> counts;
  std::stringstream in(spec);
  std::string item;
  while (std::getline(in, item, ',')) counts.push_back(parse_count(item));
  if (counts.empty()) throw bad("empty");
  // A single step: the reference's respace.py keeps step 0, where the sampler would take pure
  // noise for an almost clean image and return it unchanged. The one step starts from T-1
  // instead, so it is the model's one-step prediction from noise (a deliberate departure).
  if (counts.size() == 1 && counts[0] == 1 && num_timesteps > 1) return {num_timesteps - 1};
  // Split [0, T) into len(counts) sections; the first (T mod sections) get one extra step.
  int64_t sections = static_cast<int64_t>(counts.size());
  int64_t size_per = num_timesteps / sections, extra = num_timesteps % sections;
  std::set<int64_t> kept;
  int64_t start = 0;
  for (int64_t i = 0; i < sections; ++i) {
    int64_t size = size_per + (i < extra ? 1 : 0);
    int64_t count = counts[i];
    if (count < 1 || count > size) {
      throw bad("cannot take " + std::to_string(count) + " steps from a section of " +
                std::to_string(size));
    }
    double stride = count <= 1 ? 1.0 : static_cast<double>(size - 1) / static_cast<double>(count - 1);
    double position = 0.0;
    for (int64_t k = 0; k < count; ++k) {
      // nearbyint rounds half to even, like the reference's Python round().
      kept.insert(start + static_cast<int64_t>(std::nearbyint(position)));
      position += stride;
    }
    start += size;
  }
  return {kept.begin(), kept.end()};
}

std::vector<double> respace_betas(const std::vector<double>& betas,
                                  const std::vector<int64_t>& kept) {
  std::vector<double> out;
  double alpha_bar = 1.0, last_alpha_bar = 1.0;
  size_t next = 0;
  for (int64_t t = 0; t < static_cast<int64_t>(betas.size()) && next < kept.size(); ++t) {
    alpha_bar *= 1.0 - betas[t];
    if (t == kept[next]) {
      out.push_back(1.0 - alpha_bar / last_alpha_bar);
      last_alpha_bar = alpha_bar;
      ++next;
    }
  }
  DITLAB_ASSERT(next == kept.size(), "respace_betas: kept timesteps outside the schedule");
  return out;
}

}  // namespace ditlab
