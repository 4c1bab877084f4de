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
template <typename I> HD I floor_div(I a, I b) {
    return (a >= 0) ? a / b : -((-a + b - 1) / b);
}
template <typename I> HD I ceil_div(I a, I b) {
    return -floor_div<I>(-a, b);
}

// Output pixel number idx (logical NCHW order): its value and where it goes in y.
// I: signed index type for the coordinate arithmetic (int32 is much cheaper on the GPU; the
// launcher uses it when every coordinate fits). Memory offsets are always 64-bit.
// UP, DOWN, FS: 0 = read from p (generic); else compile-time up/down factors (same on both
// axes) and square filter size, so divisions become shifts and the tap loops unroll.
template <typename T, typename I = int64_t, int UP = 0, int DOWN = 0, int FS = 0>
HD typename AccType<T>::type upfirdn2d_element(const UpfirdnArgs& p, I idx, int64_t* out_offset) {
    using A = typename AccType<T>::type;
    constexpr bool fixed = FS > 0 && UP > 0 && DOWN > 0;
    const T* x = static_cast<const T*>(p.x);
    const A* f = static_cast<const A*>(p.f);
    const I ow = I(p.ow), oh = I(p.oh), c = I(p.c);
    const I ox = idx % ow;
    const I oy = (idx / ow) % oh;
    const I ci = (idx / (ow * oh)) % c;
    const I ni = idx / (ow * oh * c);
    const I upx = fixed ? I(UP) : I(p.upx), upy = fixed ? I(UP) : I(p.upy);
    const I downx = fixed ? I(DOWN) : I(p.downx), downy = fixed ? I(DOWN) : I(p.downy);
    const int fw = fixed ? FS : p.fw, fh = fixed ? FS : p.fh;

    // Output pixel o reads upsampled+padded positions o*down + k (k = 0..taps-1); position
    // t holds input pixel i exactly when t - pad0 == i * up.
    const I jy = oy * downy - I(p.pady0);
    const I jx = ox * downx - I(p.padx0);
    I iy0 = ceil_div<I>(jy, upy);                   if (iy0 < 0) iy0 = 0;
    I iy1 = floor_div<I>(jy + I(fh) - 1, upy);      if (iy1 > I(p.h) - 1) iy1 = I(p.h) - 1;
    I ix0 = ceil_div<I>(jx, upx);                   if (ix0 < 0) ix0 = 0;
    I ix1 = floor_div<I>(jx + I(fw) - 1, upx);      if (ix1 > I(p.w) - 1) ix1 = I(p.w) - 1;

    const T* xc = x + int64_t(ni) * p.sx[0] + int64_t(ci) * p.sx[1];
    A acc = A(0);
    if constexpr (fixed) {
        // At most ceil(FS / UP) input pixels per axis fall under the filter.
        constexpr int taps = (FS + UP - 1) / UP;
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
        for (int ty = 0; ty < taps; ++ty) {
            const I iy = iy0 + I(ty);
            if (iy <= iy1) {
                const int ky = int(iy * upy - jy);
                const int fy = p.flip ? ky : (FS - 1 - ky);
                const T* xrow = xc + int64_t(iy) * p.sx[2];
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
                for (int tx = 0; tx < taps; ++tx) {
                    const I ix = ix0 + I(tx);
                    if (ix <= ix1) {
                        const int kx = int(ix * upx - jx);
                        const int fx = p.flip ? kx : (FS - 1 - kx);
                        acc += to_acc(xrow[int64_t(ix) * p.sx[3]]) * f[fy * FS + fx];
                    }
                }
            }
        }
    } else {
        for (I iy = iy0; iy <= iy1; ++iy) {
            const int ky = int(iy * upy - jy);          // tap index into the correlation kernel
            const int fy = p.flip ? ky : (fh - 1 - ky); // convolution reverses the taps
            const T* xrow = xc + int64_t(iy) * p.sx[2];
            for (I ix = ix0; ix <= ix1; ++ix) {
                const int kx = int(ix * upx - jx);
                const int fx = p.flip ? kx : (fw - 1 - kx);
                acc += to_acc(xrow[int64_t(ix) * p.sx[3]]) * f[fy * fw + fx];
            }
        }
    }
    *out_offset = int64_t(ni) * p.sy[0] + int64_t(ci) * p.sy[1] + int64_t(oy) * p.sy[2] + int64_t(ox) * p.sy[3];
    return acc * A(p.gain);
}

// The specialisations for StyleGAN2's [1,3,3,1] resampling (4x4 filter): upsample2d,
// downsample2d and the filter after a transposed conv. Everything else is generic.
enum UpfirdnVariant { kGeneric = 0, kUp2Fs4 = 1, kDown2Fs4 = 2, kFilterFs4 = 3 };

HD UpfirdnVariant select_variant(const UpfirdnArgs& p) {
    if (p.fw != 4 || p.fh != 4 || p.upx != p.upy || p.downx != p.downy)
        return kGeneric;
    if (p.upx == 2 && p.downx == 1) return kUp2Fs4;
    if (p.upx == 1 && p.downx == 2) return kDown2Fs4;
    if (p.upx == 1 && p.downx == 1) return kFilterFs4;
    return kGeneric;
}

template <typename T, typename I, int UP, int DOWN, int FS>
__global__ void upfirdn2d_kernel(UpfirdnArgs p) {
    T* y = static_cast<T*>(p.y);
    const I total = I(p.n * p.c * p.oh * p.ow);
    const I step = I(blockDim.x) * I(gridDim.x);
    for (I idx = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); idx < total; idx += step) {
        int64_t offset;
        const auto v = upfirdn2d_element<T, I, UP, DOWN, FS>(p, idx, &offset);
        y[offset] = from_acc<T, typename AccType<T>::type>(v);
    }
}

template <typename T, typename I>
void launch_variant(const UpfirdnArgs& p, unsigned blocks, int threads, cudaStream_t stream) {
    switch (select_variant(p)) {
        case kUp2Fs4:    upfirdn2d_kernel<T, I, 2, 1, 4><<<blocks, threads, 0, stream>>>(p); break;
        case kDown2Fs4:  upfirdn2d_kernel<T, I, 1, 2, 4><<<blocks, threads, 0, stream>>>(p); break;
        case kFilterFs4: upfirdn2d_kernel<T, I, 1, 1, 4><<<blocks, threads, 0, stream>>>(p); break;
        default:         upfirdn2d_kernel<T, I, 0, 0, 0><<<blocks, threads, 0, stream>>>(p); break;
    }
}

// True when all coordinate arithmetic of upfirdn2d_element (and idx + grid stride) fits in int32.
inline bool fits_int32(const UpfirdnArgs& p, int64_t grid_threads) {
    const int64_t lim = (int64_t(1) << 31) - 1;
    const int64_t total = p.n * p.c * p.oh * p.ow;
    const int64_t span_y = p.oh * int64_t(p.downy) + p.h * int64_t(p.upy) + int64_t(p.fh) + (p.pady0 < 0 ? -p.pady0 : p.pady0);
    const int64_t span_x = p.ow * int64_t(p.downx) + p.w * int64_t(p.upx) + int64_t(p.fw) + (p.padx0 < 0 ? -p.padx0 : p.padx0);
    return total + grid_threads < lim && span_y < lim && span_x < lim;
}

template <typename T>
cudaError_t launch_typed(const UpfirdnArgs& p, cudaStream_t stream) {
    const int threads = 256;
    int64_t blocks = (p.n * p.c * p.oh * p.ow + threads - 1) / threads;
    if (blocks > 65536) blocks = 65536;     // grid-stride loop covers the rest
    if (blocks < 1) blocks = 1;
    if (fits_int32(p, blocks * threads))
        launch_variant<T, int32_t>(p, unsigned(blocks), threads, stream);
    else
        launch_variant<T, int64_t>(p, unsigned(blocks), threads, stream);
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
