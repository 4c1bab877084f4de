// Interface between the host binding (bias_act.cpp) and the kernels (bias_act.cu).
// Plain C++ on purpose: the kernel file needs no torch headers and compiles with nvcc alone.
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

// Activation ids: the `cuda_idx` field of bias_act.activation_funcs.
enum BiasActKind {
    kActLinear = 1, kActRelu = 2, kActLrelu = 3, kActTanh = 4, kActSigmoid = 5,
    kActElu = 6, kActSelu = 7, kActSoftplus = 8, kActSwish = 9
};

// Element types understood by launch_bias_act.
enum BiasActDtype { kDtypeFloat32 = 0, kDtypeFloat16 = 1, kDtypeBFloat16 = 2, kDtypeFloat64 = 3 };

struct BiasActArgs {
    const void* in;         // order 0: x;  order 1/2: the incoming gradient
    const void* bias;       // length bias_len, or nullptr (order 0; orders 1/2 with xref)
    const void* xref;       // the forward input x (swish's derivatives need it), or nullptr
    const void* yref;       // the forward output y (relu-like derivatives, clamp mask), or nullptr
    void*       out;
    int64_t     numel;
    int64_t     bias_len;    // x.size(dim); 0 when there is no bias
    int64_t     bias_stride; // x.stride(dim): element i belongs to channel (i / stride) % len
    int         act;         // BiasActKind
    int         order;       // 0: y = clamp(act(x + b) * gain); 1: g * dy/dx; 2: g * d2y/dx2
    double      alpha;       // lrelu slope
    double      gain;
    double      clamp;       // < 0: no clamping
};

// Launches the kernel on `stream`; all pointers share one dtype and one (dense) layout.
cudaError_t launch_bias_act(const BiasActArgs& args, BiasActDtype dtype, cudaStream_t stream);
