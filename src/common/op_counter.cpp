#include "src/common/op_counter.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "src/common/error.h"

namespace ditlab {
namespace {

// RecordFunction takes plain function pointers, so the tally is process-wide; OpCounter
// allows one counter at a time.
struct Tally {
  std::mutex mutex;
  std::unordered_map<std::string, int64_t> calls;
  std::atomic<bool> active{false};
};

Tally& tally() {
  static Tally* t = new Tally;  // never destroyed: a late callback on another thread stays safe
  return *t;
}

bool is_operator(const at::RecordFunction& fn) { return std::strncmp(fn.name(), "aten::", 6) == 0; }

// Operators open on this thread: those called inside another operator are its implementation
// (the CPU's batched product calls a product per matrix; a GPU makes one launch), not calls
// the framework makes.
thread_local int open_operators = 0;

std::unique_ptr<at::ObserverContext> on_enter(const at::RecordFunction& fn) {
  if (!is_operator(fn)) return nullptr;  // autograd nodes: the operators they call count
  // Inside at::parallel_for an operator's implementation runs on worker threads, where nothing
  // is open yet: those calls are not the framework's either, and their number follows the threads.
  if (at::in_parallel_region()) return nullptr;
  if (open_operators++ == 0) {
    Tally& t = tally();
    std::lock_guard<std::mutex> lock(t.mutex);
    ++t.calls[fn.name()];
  }
  return nullptr;
}

void on_exit(const at::RecordFunction& fn, at::ObserverContext* /*unused*/) {
  if (is_operator(fn) && !at::in_parallel_region() && open_operators > 0) --open_operators;
}

}  // namespace

OpCounter::OpCounter() {
  Tally& t = tally();
  if (t.active.exchange(true)) throw Error("OpCounter: another counter is already counting");
  reset();
  handle_ = at::addGlobalCallback(at::RecordFunctionCallback(on_enter, on_exit));
}

OpCounter::~OpCounter() {
  at::removeCallback(handle_);
  tally().active = false;
}

std::map<std::string, int64_t> OpCounter::counts() const {
  Tally& t = tally();
  std::lock_guard<std::mutex> lock(t.mutex);
  return {t.calls.begin(), t.calls.end()};
}

int64_t OpCounter::total() const {
  int64_t sum = 0;
  for (const auto& entry : counts()) sum += entry.second;
  return sum;
}

void OpCounter::reset() {
  Tally& t = tally();
  std::lock_guard<std::mutex> lock(t.mutex);
  t.calls.clear();
}

}  // namespace ditlab
