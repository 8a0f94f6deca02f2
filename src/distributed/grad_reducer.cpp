#include "src/distributed/grad_reducer.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <chrono>
#include <mutex>

#include "src/common/error.h"

namespace ditlab {

struct GradReducer::State {
  struct Bucket {
    std::vector<size_t> members;  // indices into parameters
    at::Tensor flat;              // the members' gradients, back to back, in the wire dtype
    size_t waiting = 0;           // members whose gradient the final backward has not produced
    bool started = false;
    PendingCollective reduction;
  };

  std::vector<at::Tensor> parameters;
  Communicator& communicator;
  GradReducerOptions options;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of;   // per parameter
  std::vector<int64_t> offset_of;  // per parameter, in its bucket's flat tensor
  std::vector<bool> filled;        // per parameter: its slot holds this step's gradient

  std::mutex mutex;  // the hooks run on autograd's threads
  bool armed = false;
  size_t next_to_start = 0;
  double exposed_seconds = 0;
  int64_t started_by_hooks = 0;

  State(std::vector<at::Tensor> params, Communicator& comm, GradReducerOptions opts)
      : parameters(std::move(params)), communicator(comm), options(opts) {
    bucket_of.resize(parameters.size());
    offset_of.resize(parameters.size());
    filled.assign(parameters.size(), false);
    Bucket bucket;
    int64_t bytes = 0, numel = 0;
    auto close = [&] {
      const auto& first = parameters[bucket.members.front()];
      auto dtype = options.reduce_dtype == at::ScalarType::Undefined ? first.scalar_type()
                                                                     : options.reduce_dtype;
      // A plain single process reduces nothing and needs no copy of the gradients.
      if (communicator.distributed()) bucket.flat = at::zeros({numel}, first.options().dtype(dtype));
      buckets.push_back(std::move(bucket));
      bucket = Bucket();
      bytes = numel = 0;
    };
    for (size_t i = parameters.size(); i-- > 0;) {
      const auto& p = parameters[i];
      // A bucket holds one dtype and one device; it closes when full.
      if (!bucket.members.empty()) {
        const auto& first = parameters[bucket.members.front()];
        if (bytes >= options.bucket_bytes || first.scalar_type() != p.scalar_type() ||
            first.device() != p.device()) {
          close();
        }
      }
      bucket_of[i] = buckets.size();
      offset_of[i] = numel;
      bucket.members.push_back(i);
      numel += p.numel();
      bytes += p.numel() * static_cast<int64_t>(p.element_size());
    }
    if (!bucket.members.empty()) close();
  }

  at::Tensor slot(size_t i) {
    return buckets[bucket_of[i]].flat.narrow(0, offset_of[i], parameters[i].numel());
  }

  // From the autograd hook of parameter i: `grad` is what this backward adds to its .grad().
  void on_gradient(size_t i, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed) return;
    Bucket& bucket = buckets[bucket_of[i]];
    DITLAB_ASSERT(!bucket.started, "a gradient arrived for a bucket already being reduced");
    torch::NoGradGuard no_grad;
    if (filled[i]) {
      slot(i).add_(grad.reshape({-1}));
      return;
    }
    const at::Tensor& accumulated = parameters[i].grad();  // earlier micro-batches
    slot(i).copy_((accumulated.defined() ? accumulated + grad : grad).reshape({-1}));
    filled[i] = true;
    if (--bucket.waiting == 0) started_by_hooks += start_ready_buckets();
  }

  // Starts every bucket whose turn has come and whose gradients are all there.
  int64_t start_ready_buckets() {
    int64_t started = 0;
    while (next_to_start < buckets.size() && buckets[next_to_start].waiting == 0) {
      Bucket& bucket = buckets[next_to_start++];
      bucket.started = true;
      bucket.reduction = communicator.all_reduce_sum_async(bucket.flat);
      ++started;
    }
    return started;
  }

  void arm() {
    std::lock_guard<std::mutex> lock(mutex);
    armed = options.overlap;
  }

  void reduce() {
    const auto start = std::chrono::steady_clock::now();
    torch::NoGradGuard no_grad;
    {
      std::lock_guard<std::mutex> lock(mutex);
      armed = false;
      // Whatever backward did not produce: gradients of earlier micro-batches, or zeros.
      for (size_t i = 0; i < parameters.size(); ++i) {
        if (filled[i]) continue;
        const at::Tensor& g = parameters[i].grad();
        if (g.defined()) {
          slot(i).copy_(g.reshape({-1}));
        } else {
          slot(i).zero_();
        }
        filled[i] = true;
        --buckets[bucket_of[i]].waiting;
      }
      start_ready_buckets();
    }
    for (auto& bucket : buckets) {
      bucket.reduction.wait();
      for (size_t i : bucket.members) {
        auto& p = parameters[i];
        if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
        p.mutable_grad().copy_(slot(i).view_as(p));
      }
    }
    // Ready for the next step.
    filled.assign(parameters.size(), false);
    for (auto& bucket : buckets) {
      bucket.waiting = bucket.members.size();
      bucket.started = false;
    }
    next_to_start = 0;
    exposed_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
};

GradReducer::GradReducer(std::vector<at::Tensor> parameters, Communicator& communicator,
                         GradReducerOptions options)
    : state_(std::make_shared<State>(std::move(parameters), communicator, options)) {
  for (auto& bucket : state_->buckets) bucket.waiting = bucket.members.size();
  if (!communicator.distributed() || !options.overlap) return;
  std::weak_ptr<State> weak = state_;
  for (size_t i = 0; i < state_->parameters.size(); ++i) {
    // A leaf's tensor hook runs once per backward, before the gradient is accumulated.
    hook_handles_.push_back(state_->parameters[i].register_hook([weak, i](const at::Tensor& grad) {
      if (auto state = weak.lock()) state->on_gradient(i, grad);
    }));
  }
}

GradReducer::~GradReducer() {
  for (size_t i = 0; i < hook_handles_.size(); ++i) {
    state_->parameters[i].remove_hook(hook_handles_[i]);
  }
}

void GradReducer::expect_final_backward() {
  if (state_->communicator.distributed()) state_->arm();
}

void GradReducer::reduce() {
  if (state_->communicator.distributed()) state_->reduce();
}

size_t GradReducer::num_buckets() const { return state_->buckets.size(); }

int64_t GradReducer::bucket_bytes_on_wire() const {
  int64_t bytes = 0;
  for (const auto& bucket : state_->buckets) {
    if (bucket.flat.defined()) bytes += bucket.flat.numel() * bucket.flat.element_size();
  }
  return bytes;
}

double GradReducer::exposed_seconds() const { return state_->exposed_seconds; }

int64_t GradReducer::buckets_started_during_backward() const { return state_->started_by_hooks; }

}  // namespace ditlab
