#include "src/common/peak_tflops.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>

#include <algorithm>
#include <chrono>
#include <fstream>

#include "src/common/compat.h"

namespace ditlab {

std::string device_display_name(const c10::Device& device) {
  if (device.is_cuda()) return compat::device_name(device);
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "cpu";
}

double gpu_peak_tflops(const std::string& name, bool bf16, bool tf32) {
  // Dense figures from NVIDIA's datasheets. The first key the name contains wins, so the PCIe
  // and NVL variants, whose clocks and power are lower, come before the SXM parts that share
  // their model number ("NVIDIA H100 80GB HBM3" is the SXM H100).
  struct Peak { const char* key; double bf16, tf32, fp32; };
  const Peak peaks[] = {{"H100 PCIe", 756.5, 378.0, 51.2}, {"H100 NVL", 835.5, 417.5, 59.8},
                        {"H800 PCIe", 756.5, 378.0, 51.2}, {"H200 NVL", 835.5, 417.5, 59.8},
                        {"H200", 989.4, 494.7, 66.9},      {"H100", 989.4, 494.7, 66.9},
                        {"H800", 989.4, 494.7, 66.9},      {"A100", 312.0, 156.0, 19.5},
                        {"A800", 312.0, 156.0, 19.5},      {"L40S", 362.1, 183.0, 91.6},
                        {"4090", 165.2, 82.6, 82.6}};
  for (const auto& p : peaks) {
    if (name.find(p.key) != std::string::npos) return bf16 ? p.bf16 : tf32 ? p.tf32 : p.fp32;
  }
  return 0.0;
}

double default_peak_tflops(const c10::Device& device, bool bf16) {
  if (device.is_cuda()) {  // 0: no MFU unless given
    return gpu_peak_tflops(device_display_name(device), bf16, compat::cuda_tf32());
  }
  torch::NoGradGuard no_grad;
  const int64_t n = 1024;
  at::Generator generator = at::detail::createCPUGenerator(0);
  const at::Tensor a = at::randn({n, n}, generator), b = at::randn({n, n}, generator);
  at::mm(a, b);  // warm-up
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    at::mm(a, b);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return 2.0 * n * n * n / best / 1e12;
}

}  // namespace ditlab
