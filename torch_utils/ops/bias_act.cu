// Elementwise bias + activation kernel and its first/second derivatives (see bias_act.py).
// Math is done in float (double for float64 tensors); fp16/bf16 are only storage types.
// The per-element math is __host__ __device__ so that tests can run it on a CPU as well.
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cmath>
#include "bias_act.h"

#define HD __host__ __device__ __forceinline__

namespace {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

HD float  to_acc(float v)          { return v; }
HD double to_acc(double v)         { return v; }
HD float  to_acc(__half v)         { return __half2float(v); }
HD float  to_acc(__nv_bfloat16 v)  { return __bfloat162float(v); }

template <typename T> HD T from_acc(float v);
template <> HD float          from_acc<float>(float v)          { return v; }
template <> HD __half         from_acc<__half>(float v)         { return __float2half_rn(v); }
template <> HD __nv_bfloat16  from_acc<__nv_bfloat16>(float v)  { return __float2bfloat16_rn(v); }
template <typename T> HD T from_acc(double v);
template <> HD double         from_acc<double>(double v)        { return v; }

HD float  exp_(float v)    { return expf(v); }
HD double exp_(double v)   { return exp(v); }
HD float  expm1_(float v)  { return expm1f(v); }
HD double expm1_(double v) { return expm1(v); }
HD float  log1p_(float v)  { return log1pf(v); }
HD double log1p_(double v) { return log1p(v); }
HD float  tanh_(float v)   { return tanhf(v); }
HD double tanh_(double v)  { return tanh(v); }
HD float  abs_(float v)    { return fabsf(v); }
HD double abs_(double v)   { return fabs(v); }

template <typename A> HD A sigmoid_(A s) { return A(1) / (A(1) + exp_(-s)); }

// SELU constants (Klambauer et al. 2017), as used by torch.nn.functional.selu.
#define SELU_SCALE 1.0507009873554804934193349852946
#define SELU_ALPHA 1.6732632423543772848170429916717

// act(s) without gain or clamp.
template <typename A> HD A act_value(int act, A s, A alpha) {
    switch (act) {
        case kActRelu:     return s > A(0) ? s : A(0);
        case kActLrelu:    return s > A(0) ? s : s * alpha;
        case kActTanh:     return tanh_(s);
        case kActSigmoid:  return sigmoid_(s);
        case kActElu:      return s > A(0) ? s : expm1_(s);
        case kActSelu:     return A(SELU_SCALE) * (s > A(0) ? s : A(SELU_ALPHA) * expm1_(s));
        case kActSoftplus: return s > A(20) ? s : log1p_(exp_(s));   // torch's threshold=20
        case kActSwish:    return s * sigmoid_(s);
        default:           return s;                                // linear
    }
}

// First (order 1) or second (order 2) derivative of act at the point whose pre-activation is s
// and whose un-gained output is u = y / gain (relu-like ids read u, swish reads s).
template <typename A> HD A act_deriv(int act, int order, A s, A u, A alpha) {
    const bool first = (order == 1);
    switch (act) {
        case kActRelu:     return first ? (u > A(0) ? A(1) : A(0)) : A(0);
        case kActLrelu:    return first ? (u > A(0) ? A(1) : alpha) : A(0);
        case kActTanh:     return first ? A(1) - u * u : A(-2) * u * (A(1) - u * u);
        case kActSigmoid:  return first ? u * (A(1) - u) : u * (A(1) - u) * (A(1) - A(2) * u);
        case kActElu:      return u > A(0) ? (first ? A(1) : A(0)) : u + A(1);
        case kActSelu:     return u > A(0) ? (first ? A(SELU_SCALE) : A(0)) : u + A(SELU_SCALE * SELU_ALPHA);
        case kActSoftplus: {            // sigmoid(s) = 1 - exp(-softplus(s))
            A sig = -expm1_(-u);
            return first ? sig : sig * (A(1) - sig);
        }
        case kActSwish: {
            A sig = sigmoid_(s);
            return first ? sig * (A(1) + s * (A(1) - sig))
                         : sig * (A(1) - sig) * (A(2) + s * (A(1) - A(2) * sig));
        }
        default:           return first ? A(1) : A(0);              // linear
    }
}

// Result for element i, in the accumulation type. I: index type (32-bit division is much
// cheaper on the GPU; the launcher uses it whenever the element count allows).
template <typename T, typename I = int64_t>
HD typename AccType<T>::type bias_act_element(const BiasActArgs& p, I i) {
    using A = typename AccType<T>::type;
    const T* in = static_cast<const T*>(p.in);
    const T* bias = static_cast<const T*>(p.bias);
    const T* xref = static_cast<const T*>(p.xref);
    const T* yref = static_cast<const T*>(p.yref);
    const A alpha = A(p.alpha), gain = A(p.gain), clamp = A(p.clamp);
    const bool has_clamp = p.clamp >= 0;

    A b = A(0);
    if (bias != nullptr && p.bias_len > 0)
        b = to_acc(bias[(i / I(p.bias_stride)) % I(p.bias_len)]);

    if (p.order == 0) {
        A y = act_value(p.act, to_acc(in[i]) + b, alpha) * gain;
        if (has_clamp)
            y = y > clamp ? clamp : (y < -clamp ? -clamp : y);
        return y;
    }

    // Derivatives: recover s (pre-activation) and u (un-gained output) from what was saved.
    A s = A(0), u = A(0);
    bool pass = true;                       // false where the clamp saturated the output
    if (xref != nullptr) {
        s = to_acc(xref[i]) + b;
        u = act_value(p.act, s, alpha);
        if (has_clamp)
            pass = abs_(u * gain) <= clamp;
    } else if (yref != nullptr) {
        A y = to_acc(yref[i]);
        u = y / gain;
        // A saturated output was stored as the clamp rounded to T (fp16 cannot hold e.g.
        // 256 * sqrt(0.5) exactly): compare against that rounded value.
        if (has_clamp)
            pass = abs_(y) < to_acc(from_acc<T>(clamp));
    }
    return pass ? to_acc(in[i]) * gain * act_deriv(p.act, p.order, s, u, alpha) : A(0);
}

template <typename T, typename I>
__global__ void bias_act_kernel(BiasActArgs p) {
    T* out = static_cast<T*>(p.out);
    const I n = I(p.numel);
    const I stride = I(blockDim.x) * I(gridDim.x);
    for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n; i += stride)
        out[i] = from_acc<T>(bias_act_element<T, I>(p, i));
}

template <typename T>
cudaError_t launch_typed(const BiasActArgs& p, cudaStream_t stream) {
    const int threads = 256;
    int64_t blocks = (p.numel + threads - 1) / threads;
    if (blocks > 65536) blocks = 65536;     // grid-stride loop covers the rest
    if (blocks < 1) blocks = 1;
    // 32-bit indices when i + grid stride cannot overflow them.
    if (p.numel + int64_t(blocks) * threads < (int64_t(1) << 32))
        bias_act_kernel<T, uint32_t><<<unsigned(blocks), threads, 0, stream>>>(p);
    else
        bias_act_kernel<T, int64_t><<<unsigned(blocks), threads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_bias_act(const BiasActArgs& args, BiasActDtype dtype, cudaStream_t stream) {
    switch (dtype) {
        case kDtypeFloat32:  return launch_typed<float>(args, stream);
        case kDtypeFloat16:  return launch_typed<__half>(args, stream);
        case kDtypeBFloat16: return launch_typed<__nv_bfloat16>(args, stream);
        case kDtypeFloat64:  return launch_typed<double>(args, stream);
    }
    return cudaErrorInvalidValue;
}
