// What 100% MFU means on a device, for `dit bench` and the trainer's logged MFU.
#pragma once
#include <c10/core/Device.h>

#include <string>

namespace ditlab {

// The device as people name it: the GPU's name, or the CPU's model name from /proc/cpuinfo.
std::string device_display_name(const c10::Device& device);

// Dense bf16 / fp32 peaks of known GPUs (no sparsity; fp32 at the TF32 tensor-core rate while
// float32 products may use TF32 (train.tf32, compat::cuda_tf32), else at CUDA-core rates), 0 for
// an unknown GPU; on CPUs the measured rate
// of a 1024^3 float32 product with the threads in use, so that MFU there says how close a step
// comes to the machine's own matmul speed. The measurement draws from a generator of its own,
// so it leaves the global random state alone.
double default_peak_tflops(const c10::Device& device, bool bf16);

// The table behind it: the peak of the GPU called `name` (as CUDA names it) for bf16 products,
// else for float32 ones through TF32 or the CUDA cores; 0 if unknown.
double gpu_peak_tflops(const std::string& name, bool bf16, bool tf32);

}  // namespace ditlab
