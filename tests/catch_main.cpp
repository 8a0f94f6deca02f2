// Catch2's main, after the same OpenBLAS kernel fix the `dit` binary applies at start-up.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "src/common/blas_tuning.h"

int main(int argc, char** argv) {
  ditlab::ensure_fast_openblas_kernels(argv);
  ditlab::keep_freed_memory_mapped();
  return Catch::Session().run(argc, argv);
}
