// A small device tensor's value brought to the host without making the host wait for the work
// queued after it. The copy is queued (into page-locked memory, on CUDA) behind the work that
// produces the value, and get() waits for that copy alone. The trainer reads each step's flags
// this way one step late, while the device already runs the next step, so that the host never
// waits for the device inside a step.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>

namespace ditlab {

class HostCopy {
 public:
  HostCopy() = default;
  explicit HostCopy(const at::Tensor& value);

  bool valid() const { return host_.defined(); }
  // The value on the host; the first call waits for the copy.
  const at::Tensor& get() const;

 private:
  at::Tensor host_;
  mutable std::shared_ptr<void> pending_;  // the CUDA event recorded after the copy; null when done
};

}  // namespace ditlab
