#include "src/common/blas_tuning.h"

#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace ditlab {

void ensure_fast_openblas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("DITLAB_NO_BLAS_TUNING") ||
      std::getenv("DITLAB_BLAS_TUNED")) {
    return;
  }
  using CoreName = char* (*)();
  auto core_name = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (core_name == nullptr) return;  // not OpenBLAS
  const char* core = core_name();
  static const char* kLegacyCores[] = {"Prescott", "Core2", "Penryn", "Dunnington",
                                       "Nehalem",  "Atom",  "Katmai", "Northwood"};
  bool legacy = false;
  for (const char* name : kLegacyCores) legacy = legacy || (core && std::strcmp(core, name) == 0);
  if (!legacy) return;
  __builtin_cpu_init();
  const char* better = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    better = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    better = "Haswell";
  }
  if (better == nullptr) return;
  setenv("OPENBLAS_CORETYPE", better, 1);
  setenv("DITLAB_BLAS_TUNED", "1", 1);  // never loop, even if the restart fails to take effect
  execv("/proc/self/exe", argv);
  // execv only returns on failure: carry on with the slow kernels rather than fail.
}

void keep_freed_memory_mapped() {
  // Every block from the heap, never from mmap: glibc maps blocks above its mmap threshold
  // (at most 32 MiB) afresh on every allocation and unmaps them on free, so a training step
  // that allocates larger tensors (attention logits) page-faults through all of them each
  // time; measured on U-DiT, half the step time was spent in the kernel. Freed heap memory is
  // kept for the next step (trim threshold 1 GiB).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace ditlab
