// Python binding of the upfirdn2d kernel: argument checks, output allocation, stream choice.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include "upfirdn2d.h"

namespace {

UpfirdnDtype dtype_of(const torch::Tensor& t) {
    switch (t.scalar_type()) {
        case torch::kFloat32:  return kUpfirdnFloat32;
        case torch::kFloat16:  return kUpfirdnFloat16;
        case torch::kBFloat16: return kUpfirdnBFloat16;
        case torch::kFloat64:  return kUpfirdnFloat64;
        default: TORCH_CHECK(false, "upfirdn2d: unsupported dtype ", t.scalar_type());
    }
    return kUpfirdnFloat32;
}

torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t upx, int64_t upy, int64_t downx,
                        int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                        bool flip, double gain) {
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [N, C, H, W]");
    TORCH_CHECK(f.dim() == 2 && f.numel() > 0, "upfirdn2d: f must be a non-empty [fh, fw] tensor");
    TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f must be on x's device");
    const auto want = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    TORCH_CHECK(f.scalar_type() == want, "upfirdn2d: f must be float32 (float64 for float64 x)");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up/down must be >= 1");
    f = f.contiguous();

    const int64_t fh = f.size(0), fw = f.size(1);
    const int64_t oh = (x.size(2) * upy + pady0 + pady1 - fh) / downy + 1;
    const int64_t ow = (x.size(3) * upx + padx0 + padx1 - fw) / downx + 1;
    TORCH_CHECK(x.size(2) * upy + pady0 + pady1 - fh >= 0 && x.size(3) * upx + padx0 + padx1 - fw >= 0,
                "upfirdn2d: the filter is larger than the padded input");

    const c10::cuda::CUDAGuard guard(x.device());
    torch::Tensor y = torch::empty({x.size(0), x.size(1), oh, ow},
                                   x.options().memory_format(x.suggest_memory_format()));
    if (y.numel() == 0 || x.numel() == 0) {
        y.zero_();
        return y;
    }

    UpfirdnArgs p;
    p.x = x.data_ptr();
    p.f = f.data_ptr();
    p.y = y.data_ptr();
    p.n = x.size(0); p.c = x.size(1); p.h = x.size(2); p.w = x.size(3);
    p.oh = oh; p.ow = ow;
    for (int d = 0; d < 4; ++d) {
        p.sx[d] = x.stride(d);
        p.sy[d] = y.stride(d);
    }
    p.fh = int(fh); p.fw = int(fw);
    p.upx = int(upx); p.upy = int(upy); p.downx = int(downx); p.downy = int(downy);
    p.padx0 = int(padx0); p.pady0 = int(pady0);
    p.flip = flip;
    p.gain = gain;
    cudaError_t err = launch_upfirdn2d(p, dtype_of(x), c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "upfirdn2d: kernel launch failed: ", cudaGetErrorString(err));
    return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "upsample, pad, FIR filter, downsample (see upfirdn2d.py)");
}
