// Catch2's main, after the same OpenBLAS kernel fix the `dit` binary applies at start-up.
// A test name that matches nothing, or a test case without assertions, fails instead of
// passing empty (ctest runs each case by name, so a mangled name would otherwise go unnoticed).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "src/common/blas_tuning.h"

int main(int argc, char** argv) {
  ditlab::ensure_fast_openblas_kernels(argv);
  ditlab::keep_freed_memory_mapped();
  Catch::Session session;
  if (int error = session.applyCommandLine(argc, argv)) return error;
  session.configData().warnings = static_cast<Catch::WarnAbout::What>(
      Catch::WarnAbout::NoTests | Catch::WarnAbout::NoAssertions);
  return session.run();
}
