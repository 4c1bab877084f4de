// Python binding of the bias_act kernels: argument checks, output allocation, stream choice.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include "bias_act.h"

namespace {

BiasActDtype dtype_of(const torch::Tensor& t) {
    switch (t.scalar_type()) {
        case torch::kFloat32:  return kDtypeFloat32;
        case torch::kFloat16:  return kDtypeFloat16;
        case torch::kBFloat16: return kDtypeBFloat16;
        case torch::kFloat64:  return kDtypeFloat64;
        default: TORCH_CHECK(false, "bias_act: unsupported dtype ", t.scalar_type());
    }
    return kDtypeFloat32;
}

// Optional tensors are passed as empty tensors; a present one must match `x` exactly.
const void* optional_like(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
    if (!t.defined() || t.numel() == 0)
        return nullptr;
    TORCH_CHECK(t.device() == x.device(), "bias_act: ", name, " is on another device than x");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_act: ", name, " must have x's dtype");
    TORCH_CHECK(t.sizes() == x.sizes() && t.strides() == x.strides(),
                "bias_act: ", name, " must have x's shape and strides");
    return t.data_ptr();
}

torch::Tensor run(const torch::Tensor& in, const torch::Tensor& bias, const torch::Tensor& xref,
                  const torch::Tensor& yref, int64_t dim, int64_t act, double alpha, double gain,
                  double clamp, int64_t order) {
    TORCH_CHECK(in.is_cuda(), "bias_act: tensors must be on a CUDA device");
    TORCH_CHECK(in.is_non_overlapping_and_dense(), "bias_act: input must be dense (any dim order)");
    TORCH_CHECK(dim >= 0 && dim < in.dim(), "bias_act: dim out of range");
    TORCH_CHECK(act >= kActLinear && act <= kActSwish, "bias_act: unknown activation id ", act);
    TORCH_CHECK(order >= 0 && order <= 2, "bias_act: order must be 0, 1 or 2");
    if (bias.numel() > 0) {
        TORCH_CHECK(bias.dim() == 1 && bias.is_contiguous(), "bias_act: bias must be a contiguous 1-D tensor");
        TORCH_CHECK(bias.size(0) == in.size(dim), "bias_act: bias length must equal x.shape[dim]");
        TORCH_CHECK(bias.device() == in.device() && bias.scalar_type() == in.scalar_type(),
                    "bias_act: bias must have x's device and dtype");
    }
    const c10::cuda::CUDAGuard guard(in.device());
    torch::Tensor out = torch::empty_like(in);      // same strides: in is dense
    if (in.numel() == 0)
        return out;

    const bool has_bias = bias.numel() > 0;
    const BiasActArgs args = {                           // in the field order of bias_act.h
        in.data_ptr(),
        has_bias ? bias.data_ptr() : nullptr,
        optional_like(xref, in, "xref"),
        optional_like(yref, in, "yref"),
        out.data_ptr(),
        in.numel(),
        has_bias ? in.size(dim) : 0,                     // bias_len
        in.stride(dim) > 0 ? in.stride(dim) : 1,         // bias_stride (a size-1 axis may have 0)
        int(act), int(order),
        alpha, gain, clamp,
    };
    cudaError_t err = launch_bias_act(args, dtype_of(in), c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "bias_act: kernel launch failed: ", cudaGetErrorString(err));
    return out;
}

torch::Tensor forward(torch::Tensor x, torch::Tensor b, int64_t dim, int64_t act, double alpha,
                      double gain, double clamp) {
    return run(x, b, torch::Tensor(), torch::Tensor(), dim, act, alpha, gain, clamp, 0);
}

torch::Tensor grad(torch::Tensor g, torch::Tensor xref, torch::Tensor b, torch::Tensor yref,
                   int64_t dim, int64_t act, double alpha, double gain, double clamp, int64_t order) {
    TORCH_CHECK(order == 1 || order == 2, "bias_act.grad: order must be 1 or 2");
    return run(g, b, xref, yref, dim, act, alpha, gain, clamp, order);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward", &forward, "y = clamp(act(x + b) * gain)");
    m.def("grad", &grad, "g * gain * act^(order)(x + b), zero where the clamp saturated");
}
