// AdamW as the training step runs it: the learning rates and the decision to skip a step (a
// non-finite loss or gradient) are device tensors, so a step reads nothing back to the host and
// can be recorded in a CUDA graph. On LibTorch 2.4+ this is PyTorch's fused kernel
// (_fused_adamw_ with found_inf). Before, it is multi_tensor_adamw_step after reading the skip
// flag: a host read, free on the CPUs those versions run on here.
//
// The state stays torch::optim::AdamW's (moments and a step count per parameter), so checkpoints
// do not change. With the fused kernel the step counts live on the device meanwhile:
// sync_to_host() writes them into the optimizer's state, reload() takes a replaced state up.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <vector>

namespace torch::optim {
class AdamW;
}

namespace ditlab {

class DeviceAdamW {
 public:
  // `lr_multipliers`: one per parameter group of `optimizer` (µP's per-group scaling).
  DeviceAdamW(torch::optim::AdamW& optimizer, std::vector<double> lr_multipliers, c10::Device device);
  ~DeviceAdamW();

  // Whether the update reads nothing back (the fused kernel).
  bool on_device() const { return fused_; }

  // The learning rate of the next step (each group gets it times its multiplier); on the device,
  // a queued write.
  void set_lr(double lr);
  // One update of every parameter with a gradient, skipped where `found_inf` (a 0-dim float32
  // tensor on the device, 0 or 1) is 1.
  void step(const at::Tensor& found_inf);

  // The optimizer's state made current, before something reads it (a checkpoint).
  void sync_to_host();
  // The optimizer's state was replaced (a restore): read it again before the next step.
  void reload();

 private:
  struct Bucket;
  void build_buckets();

  torch::optim::AdamW& optimizer_;
  const std::vector<double> lr_multipliers_;
  const c10::Device device_;
  const bool fused_;
  std::vector<at::Tensor> group_lr_;  // fused: per group, 0-dim float32 on the device
  std::vector<Bucket> buckets_;
};

}  // namespace ditlab
