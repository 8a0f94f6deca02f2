#include <catch2/catch.hpp>

#include "src/common/peak_tflops.h"

using namespace ditlab;

TEST_CASE("GPU peaks tell the PCIe and NVL parts from the SXM ones", "[peak_tflops]") {
  // Names as cudaGetDeviceProperties gives them; dense bf16 / fp32 TFLOP/s from the datasheets.
  CHECK(gpu_peak_tflops("NVIDIA H100 80GB HBM3", true, false) == Approx(989.4));
  CHECK(gpu_peak_tflops("NVIDIA H100 80GB HBM3", false, false) == Approx(66.9));
  CHECK(gpu_peak_tflops("NVIDIA H100 PCIe", true, false) == Approx(756.5));
  CHECK(gpu_peak_tflops("NVIDIA H100 NVL", true, false) == Approx(835.5));
  CHECK(gpu_peak_tflops("NVIDIA H200", true, false) == Approx(989.4));
  CHECK(gpu_peak_tflops("NVIDIA H200 NVL", true, false) == Approx(835.5));
  CHECK(gpu_peak_tflops("NVIDIA A100-SXM4-80GB", true, false) == Approx(312.0));
  CHECK(gpu_peak_tflops("Tesla V100-SXM2-16GB", true, false) == 0.0);  // unknown: no MFU unless given
  // float32 products through TF32 tensor cores (train.tf32): the datasheets' dense TF32 rates.
  CHECK(gpu_peak_tflops("NVIDIA H100 80GB HBM3", false, true) == Approx(494.7));
  CHECK(gpu_peak_tflops("NVIDIA H100 PCIe", false, true) == Approx(378.0));
  CHECK(gpu_peak_tflops("NVIDIA A100-SXM4-80GB", false, true) == Approx(156.0));
  CHECK(gpu_peak_tflops("NVIDIA L40S", false, true) == Approx(183.0));
  CHECK(gpu_peak_tflops("NVIDIA H100 80GB HBM3", true, true) == Approx(989.4));  // bf16 is bf16
}
