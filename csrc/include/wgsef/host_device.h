// Marks functions that CUDA kernels call too; plain inline functions elsewhere.
#pragma once

#ifdef __CUDACC__
#define WGSEF_HOST_DEVICE __host__ __device__
#else
#define WGSEF_HOST_DEVICE
#endif
