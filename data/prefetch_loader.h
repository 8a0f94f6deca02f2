// Overlaps batch assembly with the training step: while step s trains, background tasks (one
// std::async per step) prepare the batches of the next `depth` steps. Batches are a pure function of the step, so
// prefetching never changes results.
#pragma once
#include <deque>
#include <functional>
#include <future>
#include <memory>

#include "data/dataset.h"
#include "data/epoch_sampler.h"

namespace ditlab {

class PrefetchLoader {
 public:
  PrefetchLoader(std::shared_ptr<Dataset> dataset, EpochSampler sampler, int64_t depth);
  ~PrefetchLoader();

  // The global batch of `step`. Steps must be requested in increasing order.
  Batch batch_for_step(int64_t step);

  const EpochSampler& sampler() const { return sampler_; }

 private:
  void schedule_until(int64_t step);

  std::shared_ptr<Dataset> dataset_;
  EpochSampler sampler_;
  int64_t depth_;
  int64_t next_scheduled_ = -1;
  std::deque<std::pair<int64_t, std::future<Batch>>> pending_;
};

}  // namespace ditlab
