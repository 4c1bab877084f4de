"""grid_sample (bilinear, zero padding, align_corners=False) with a working double backward.

torch's own grid_sample cannot be differentiated twice ("derivative for
aten::grid_sampler_2d_backward is not implemented"), but R1 differentiates through the ADA
augmentation, which samples with it. Here the forward and first backward run torch's fast
kernels; the second backward recomputes the first through `_grid_sample_ref`, a differentiable
formulation in gather/arithmetic ops, and lets autograd take its derivative.
"""

import torch

enabled = True      # False: plain torch.nn.functional.grid_sample (no double backward)


def grid_sample(input, grid):
    """Bilinear sampling of input [N, C, H, W] at grid [N, Ho, Wo, 2] (x, y in [-1, 1]).

    Same result as torch.nn.functional.grid_sample(input, grid, mode='bilinear',
    padding_mode='zeros', align_corners=False): [N, C, Ho, Wo]. Differentiable twice.
    """
    if not enabled:
        return torch.nn.functional.grid_sample(input, grid, mode='bilinear', padding_mode='zeros',
                                               align_corners=False)
    if input.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != input.shape[0]:
        raise ValueError(f'grid_sample: expected input [N, C, H, W] and grid [N, Ho, Wo, 2], '
                         f'got {list(input.shape)} and {list(grid.shape)}')
    return _GridSample.apply(input, grid)


def _grid_sample_ref(input, grid):
    """Differentiable bilinear grid sampling in plain ops (matches torch's zeros/align_corners=False).

    Gradients with respect to the grid come from the interpolation weights (the corner
    indices are piecewise constant), exactly as in torch's kernel.
    """
    n, c, h, w = input.shape
    _, ho, wo, _ = grid.shape
    ix = ((grid[..., 0] + 1) * w - 1) / 2     # pixel coordinates, [N, Ho, Wo]
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0 = torch.floor(ix.detach())
    y0 = torch.floor(iy.detach())
    wx1 = ix - x0
    wy1 = iy - y0
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    flat = input.reshape(n, c, h * w)
    out = 0
    for cy, wy in ((y0, wy0), (y0 + 1, wy1)):
        for cx, wx in ((x0, wx0), (x0 + 1, wx1)):
            inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
            idx = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long().reshape(n, 1, ho * wo)
            vals = flat.gather(2, idx.expand(n, c, ho * wo)).reshape(n, c, ho, wo)
            weight = (wx * wy * inside.to(wx.dtype)).unsqueeze(1)
            out = out + vals * weight
    return out


class _GridSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, grid):
        ctx.save_for_backward(input, grid)
        return torch.nn.functional.grid_sample(input, grid, mode='bilinear', padding_mode='zeros',
                                               align_corners=False)

    @staticmethod
    def backward(ctx, grad):
        # Both gradients come from one differentiable Function, so they can be differentiated again.
        return _GridSampleBackward.apply(grad, *ctx.saved_tensors)


class _GridSampleBackward(torch.autograd.Function):
    """(grad_output, input, grid) -> (grad_input, grad_grid) of bilinear grid_sample."""

    @staticmethod
    def forward(ctx, grad_output, input, grid):
        # interpolation_mode 0 = bilinear, padding_mode 0 = zeros, align_corners = False.
        grad_input, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_output, input, grid, 0, 0, False, [bool(ctx.needs_input_grad[1]), True])
        ctx.save_for_backward(grad_output, input, grid)
        return grad_input, grad_grid

    @staticmethod
    @torch.autograd.function.once_differentiable   # second order only: a third raises
    def backward(ctx, gg_input, gg_grid):
        grad_output, input, grid = ctx.saved_tensors
        with torch.enable_grad():
            go = grad_output.detach().requires_grad_(ctx.needs_input_grad[0])
            inp = input.detach().requires_grad_(ctx.needs_input_grad[1])
            grd = grid.detach().requires_grad_(True)
            out = _grid_sample_ref(inp, grd)
            first = torch.autograd.grad(out, [inp, grd] if inp.requires_grad else [grd], go,
                                        create_graph=True, allow_unused=True)
            g_inp, g_grd = (first if inp.requires_grad else (None, first[0]))
            total = 0
            if gg_input is not None and g_inp is not None:
                total = total + (g_inp * gg_input).sum()
            if gg_grid is not None and g_grd is not None:
                total = total + (g_grd * gg_grid).sum()
            wanted = [t for t in (go, inp, grd) if t.requires_grad]
            if not torch.is_tensor(total) or not total.requires_grad:
                return None, None, None
            grads = dict(zip([id(t) for t in wanted],
                             torch.autograd.grad(total, wanted, allow_unused=True)))
        return (grads.get(id(go)) if ctx.needs_input_grad[0] else None,
                grads.get(id(inp)) if ctx.needs_input_grad[1] else None,
                grads.get(id(grd)) if ctx.needs_input_grad[2] else None)
