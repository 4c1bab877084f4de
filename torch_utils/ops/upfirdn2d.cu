// Generic upfirdn2d kernel: one thread per output pixel, looping only over the filter taps
// that land on real (non-inserted-zero) input pixels. See upfirdn2d.py for the semantics.
// The per-pixel math is __host__ __device__ so that tests can run it on a CPU as well.
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "upfirdn2d.h"

#define HD __host__ __device__ __forceinline__

namespace {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

HD float  to_acc(float v)          { return v; }
HD double to_acc(double v)         { return v; }
HD float  to_acc(__half v)         { return __half2float(v); }
HD float  to_acc(__nv_bfloat16 v)  { return __bfloat162float(v); }

template <typename T, typename A> HD T from_acc(A v);
template <> HD float         from_acc<float, float>(float v)          { return v; }
template <> HD __half        from_acc<__half, float>(float v)         { return __float2half_rn(v); }
template <> HD __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v)  { return __float2bfloat16_rn(v); }
template <> HD double        from_acc<double, double>(double v)       { return v; }

// Floor and ceiling division for a possibly negative numerator and a positive divisor.
HD int64_t floor_div(int64_t a, int64_t b) {
    return (a >= 0) ? a / b : -((-a + b - 1) / b);
}
HD int64_t ceil_div(int64_t a, int64_t b) {
    return -floor_div(-a, b);
}

// Output pixel number idx (logical NCHW order): its value and where it goes in y.
template <typename T>
HD typename AccType<T>::type upfirdn2d_element(const UpfirdnArgs& p, int64_t idx, int64_t* out_offset) {
    using A = typename AccType<T>::type;
    const T* x = static_cast<const T*>(p.x);
    const A* f = static_cast<const A*>(p.f);
    const int64_t ox = idx % p.ow;
    const int64_t oy = (idx / p.ow) % p.oh;
    const int64_t ci = (idx / (p.ow * p.oh)) % p.c;
    const int64_t ni = idx / (p.ow * p.oh * p.c);

    // Output pixel o reads upsampled+padded positions o*down + k (k = 0..taps-1); position
    // t holds input pixel i exactly when t - pad0 == i * up.
    const int64_t jy = oy * p.downy - p.pady0;
    const int64_t jx = ox * p.downx - p.padx0;
    int64_t iy0 = ceil_div(jy, p.upy);                  if (iy0 < 0) iy0 = 0;
    int64_t iy1 = floor_div(jy + p.fh - 1, p.upy);      if (iy1 > p.h - 1) iy1 = p.h - 1;
    int64_t ix0 = ceil_div(jx, p.upx);                  if (ix0 < 0) ix0 = 0;
    int64_t ix1 = floor_div(jx + p.fw - 1, p.upx);      if (ix1 > p.w - 1) ix1 = p.w - 1;

    const T* xc = x + ni * p.sx[0] + ci * p.sx[1];
    A acc = A(0);
    for (int64_t iy = iy0; iy <= iy1; ++iy) {
        const int ky = int(iy * p.upy - jy);            // tap index into the correlation kernel
        const int fy = p.flip ? ky : (p.fh - 1 - ky);   // convolution reverses the taps
        for (int64_t ix = ix0; ix <= ix1; ++ix) {
            const int kx = int(ix * p.upx - jx);
            const int fx = p.flip ? kx : (p.fw - 1 - kx);
            acc += to_acc(xc[iy * p.sx[2] + ix * p.sx[3]]) * f[fy * p.fw + fx];
        }
    }
    *out_offset = ni * p.sy[0] + ci * p.sy[1] + oy * p.sy[2] + ox * p.sy[3];
    return acc * A(p.gain);
}

template <typename T>
__global__ void upfirdn2d_kernel(UpfirdnArgs p) {
    T* y = static_cast<T*>(p.y);
    const int64_t total = p.n * p.c * p.oh * p.ow;
    const int64_t step = int64_t(blockDim.x) * gridDim.x;
    for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
        int64_t offset;
        const auto v = upfirdn2d_element<T>(p, idx, &offset);
        y[offset] = from_acc<T, typename AccType<T>::type>(v);
    }
}

template <typename T>
cudaError_t launch_typed(const UpfirdnArgs& p, cudaStream_t stream) {
    const int threads = 256;
    int64_t blocks = (p.n * p.c * p.oh * p.ow + threads - 1) / threads;
    if (blocks > 65536) blocks = 65536;     // grid-stride loop covers the rest
    if (blocks < 1) blocks = 1;
    upfirdn2d_kernel<T><<<unsigned(blocks), threads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_upfirdn2d(const UpfirdnArgs& args, UpfirdnDtype dtype, cudaStream_t stream) {
    switch (dtype) {
        case kUpfirdnFloat32:  return launch_typed<float>(args, stream);
        case kUpfirdnFloat16:  return launch_typed<__half>(args, stream);
        case kUpfirdnBFloat16: return launch_typed<__nv_bfloat16>(args, stream);
        case kUpfirdnFloat64:  return launch_typed<double>(args, stream);
    }
    return cudaErrorInvalidValue;
}
