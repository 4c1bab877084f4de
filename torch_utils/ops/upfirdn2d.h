// Interface between the host binding (upfirdn2d.cpp) and the kernel (upfirdn2d.cu).
// Plain C++ on purpose: the kernel file needs no torch headers and compiles with nvcc alone.
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

enum UpfirdnDtype { kUpfirdnFloat32 = 0, kUpfirdnFloat16 = 1, kUpfirdnBFloat16 = 2, kUpfirdnFloat64 = 3 };

struct UpfirdnArgs {
    const void* x;          // [N, C, H, W] with arbitrary strides (in elements)
    const void* f;          // [fh, fw] contiguous taps: float64 for float64 x, else float32
    void*       y;          // [N, C, OH, OW] with arbitrary strides
    int64_t n, c, h, w;
    int64_t oh, ow;
    int64_t sx[4];          // strides of x: n, c, h, w
    int64_t sy[4];          // strides of y
    int     fh, fw;
    int     upx, upy, downx, downy;
    int     padx0, pady0;   // the far-side padding only shapes OH/OW, already folded in
    bool    flip;           // true: correlate with f; false: convolve (taps reversed)
    double  gain;
};

cudaError_t launch_upfirdn2d(const UpfirdnArgs& args, UpfirdnDtype dtype, cudaStream_t stream);
