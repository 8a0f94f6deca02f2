#include "data/prefetch_loader.h"

#include "src/common/error.h"

namespace ditlab {

PrefetchLoader::PrefetchLoader(std::shared_ptr<Dataset> dataset, EpochSampler sampler,
                               int64_t depth, int rank, int world_size, bool pin_memory)
    : dataset_(std::move(dataset)),
      sampler_(std::move(sampler)),
      depth_(depth),
      rank_(rank),
      world_size_(world_size),
      pin_memory_(pin_memory) {}

namespace {
Batch pinned(Batch batch) {
  for (at::Tensor* t : {&batch.images, &batch.labels, &batch.cached_latents}) {
    if (t->defined()) *t = t->pin_memory();
  }
  return batch;
}
}  // namespace

std::vector<int64_t> PrefetchLoader::shard(int64_t step) {
  auto indices = sampler_.global_batch(step);
  const size_t per_rank = indices.size() / static_cast<size_t>(world_size_);
  auto first = indices.begin() + static_cast<std::ptrdiff_t>(per_rank * rank_);
  return {first, first + static_cast<std::ptrdiff_t>(per_rank)};
}

PrefetchLoader::~PrefetchLoader() {
  for (auto& [step, future] : pending_) {
    if (future.valid()) future.wait();  // never leave a thread touching a destroyed dataset
  }
}

void PrefetchLoader::schedule_until(int64_t last) {
  for (int64_t s = next_scheduled_; s <= last; ++s) {
    auto indices = shard(s);  // sampler used on this thread only
    auto dataset = dataset_;
    pending_.emplace_back(s, std::async(std::launch::async, [dataset, indices, pin = pin_memory_] {
                            Batch batch = dataset->get_batch(indices);
                            return pin ? pinned(std::move(batch)) : batch;
                          }));
  }
  next_scheduled_ = std::max(next_scheduled_, last + 1);
}

Batch PrefetchLoader::batch_for_step(int64_t step) {
  if (depth_ == 0) return dataset_->get_batch(shard(step));
  // A jump (first call, or resume) drops what was prepared for other steps.
  if (pending_.empty() || pending_.front().first != step) {
    for (auto& [s, future] : pending_) future.wait();
    pending_.clear();
    next_scheduled_ = step;
  }
  schedule_until(step + depth_);
  auto future = std::move(pending_.front().second);
  pending_.pop_front();
  return future.get();  // rethrows a loading error (e.g. a corrupt image) on the training thread
}

}  // namespace ditlab
