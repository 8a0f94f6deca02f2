// OpenBLAS picks its matrix kernels from the CPU model. On virtual machines that hide the model
// (this project's 2-core machines among them) it falls back to "Prescott" kernels from 2004 and
// runs LibTorch's matrix products about 4x slower than the CPU can (measured 39 vs 160 GFLOP/s,
// docs/performance.md). Kernel choice happens when the library loads, before main(), so the only
// remedy is to restart the process once with OPENBLAS_CORETYPE set to what the CPU supports.
#pragma once

namespace ditlab {

// If OpenBLAS is in use, chose a legacy core, OPENBLAS_CORETYPE is unset and the CPU has AVX-512
// (or AVX2 + FMA), re-executes this program with OPENBLAS_CORETYPE=SkylakeX (or Haswell).
// Returns normally in every other case. DITLAB_NO_BLAS_TUNING=1 turns this off.
void ensure_fast_openblas_kernels(char** argv);

// Keeps large freed blocks in the heap instead of unmapping them: a training step allocates the
// same activation sizes every time, and returning them to the kernel costs page faults on every
// step (about 10% of the step time here).
void keep_freed_memory_mapped();

}  // namespace ditlab
