"""Dynamic INT8 for the linear layers of a model on CPU (`model.quantization: int8`).

Weights are quantized once at load time, symmetric and per output channel; activations
are quantized on every call, symmetric and per token (per row), then multiplied with
`torch._int_mm` (int8 x int8 -> int32) and scaled back to float.

Why not a library: on the 2-core CPU this service is tuned for, with Whisper base,
- `torch.ao.quantization.quantize_dynamic` (deprecated) is fast but quantizes each
  activation tensor with one scale and 7 bits; it raised the word error rate on the test
  speech by 6 points;
- torchao's `Int8DynamicActivationInt8WeightConfig` quantizes the same way as this module
  and is as accurate, but its CPU path ran slower than FP32 (0.66 vs 0.9 clips/s).
This module keeps torchao's accuracy (+0.6 points) at about twice FP32's speed; the figures
are in docs/performance.md and the benchmark re-measures them.
"""

from __future__ import annotations

import torch
from torch import nn

_INT8_MAX = 127.0
_EPS = 1e-8  # an all-zero row or channel gets a tiny scale instead of a division by zero


class Int8Linear(nn.Module):
    """Stands in for an `nn.Linear` with int8 weights; takes and returns float32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().to(torch.float32)
        scale = weight.abs().amax(dim=1).clamp(min=_EPS) / _INT8_MAX
        # Stored (out, in) and passed to _int_mm transposed: oneDNN's int8 GEMM is up to
        # 3x faster for one-token decoder steps with this layout than with (in, out).
        self.register_buffer(
            "weight_int8", torch.round(weight / scale[:, None]).to(torch.int8).contiguous()
        )
        self.register_buffer("weight_scale", scale)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32))
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        # abs().amax, not vector_norm(ord=inf): the latter took 15x longer on CPU.
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=_EPS).div_(_INT8_MAX)
        rows_int8 = (rows / row_scale).round_().to(torch.int8)
        out = torch._int_mm(rows_int8, self.weight_int8.t()).to(torch.float32)
        # In place: these tensors are (tokens x out_features), the size that costs here
        # (an int32 x float32 multiply that converts on the fly was 10x slower still).
        out.mul_(row_scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linear_layers(model: nn.Module) -> int:
    """Swap every float32 `nn.Linear` in `model` for an `Int8Linear`; returns how many.

    Embeddings, convolutions and norms stay float32: they are a small share of the
    compute. A weight tied to an embedding (Whisper's output projection) is copied, so
    the embedding keeps its float weights.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.weight.dtype == torch.float32:
                setattr(parent, name, Int8Linear(child))
                swapped += 1
    return swapped
