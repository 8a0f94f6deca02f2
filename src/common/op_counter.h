// Counts the ATen operators called, by name, on every thread (the autograd engine's included),
// while an OpCounter lives. Only outermost calls count: those the framework, its autograd
// formulas or the optimizer make, not the ones an operator makes inside its own implementation
// (the CPU's batched matrix product calls `select` and `mm` per matrix where a GPU launches one
// kernel). On a GPU each counted call costs the host a dispatch and, for most, a kernel launch;
// unlike that time, the count is the same on a CPU, where it can be compared with the PyTorch
// reference's (`dit bench --count-ops`, `scripts/race.sh --count-ops`).
#pragma once
#include <cstdint>
#include <map>
#include <string>

namespace ditlab {

class OpCounter {
 public:
  // Starts counting; throws Error when another OpCounter is counting (the callback is global).
  OpCounter();
  ~OpCounter();
  OpCounter(const OpCounter&) = delete;
  OpCounter& operator=(const OpCounter&) = delete;

  // Outermost calls so far per operator ("aten::linear" -> 64; the aten::addmm it makes does
  // not count).
  std::map<std::string, int64_t> counts() const;
  int64_t total() const;
  void reset();

 private:
  uint64_t handle_ = 0;
};

}  // namespace ditlab
