#include <catch2/catch.hpp>

#include "src/common/peak_tflops.h"

using namespace ditlab;

TEST_CASE("GPU peaks tell the PCIe and NVL parts from the SXM ones", "[peak_tflops]") {
  // Names as cudaGetDeviceProperties gives them; dense bf16 / fp32 TFLOP/s from the datasheets.
  CHECK(gpu_peak_tflops("NVIDIA H100 80GB HBM3", true) == Approx(989.4));
  CHECK(gpu_peak_tflops("NVIDIA H100 80GB HBM3", false) == Approx(66.9));
  CHECK(gpu_peak_tflops("NVIDIA H100 PCIe", true) == Approx(756.5));
  CHECK(gpu_peak_tflops("NVIDIA H100 NVL", true) == Approx(835.5));
  CHECK(gpu_peak_tflops("NVIDIA H200", true) == Approx(989.4));
  CHECK(gpu_peak_tflops("NVIDIA H200 NVL", true) == Approx(835.5));
  CHECK(gpu_peak_tflops("NVIDIA A100-SXM4-80GB", true) == Approx(312.0));
  CHECK(gpu_peak_tflops("Tesla V100-SXM2-16GB", true) == 0.0);  // unknown: no MFU unless given
}
