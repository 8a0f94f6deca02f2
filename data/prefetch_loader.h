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
  // With several ranks, each loads only its shard of every global batch: the `rank`-th of
  // `world_size` equal consecutive slices. `pin_memory` (CUDA) puts prefetched batches in
  // page-locked memory, from which the step copies them to the GPU without waiting.
  PrefetchLoader(std::shared_ptr<Dataset> dataset, EpochSampler sampler, int64_t depth,
                 int rank = 0, int world_size = 1, bool pin_memory = false);
  ~PrefetchLoader();

  // This rank's shard of the global batch of `step`. Steps must be requested in increasing order.
  Batch batch_for_step(int64_t step);

  const EpochSampler& sampler() const { return sampler_; }

 private:
  void schedule_until(int64_t step);
  std::vector<int64_t> shard(int64_t step);

  std::shared_ptr<Dataset> dataset_;
  EpochSampler sampler_;
  int64_t depth_;
  int rank_, world_size_;
  bool pin_memory_;
  int64_t next_scheduled_ = -1;
  std::deque<std::pair<int64_t, std::future<Batch>>> pending_;
};

}  // namespace ditlab
