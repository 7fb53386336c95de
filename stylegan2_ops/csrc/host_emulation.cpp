// The test build of the extension: the same kernels and bindings compiled for the CPU, with
// host_emulation.h standing in for the GPU (see _build.build_host_emulation). It lets CI run
// the kernels' code on machines without a GPU; users' builds never include it.
#define HDOPS_HOST_EMULATION 1

#include "bias_act.cu"
#include "modulation.cu"
#include "upfirdn2d.cu"

// The kernels are parsed; keep the CUDA builtin names away from the torch headers below.
#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim
#undef __shared__

#include "ops.cpp"
