"""Dynamic INT8 for the linear layers of a model on CPU (`model.quantization: int8`).

Weights are quantized once at load time, symmetric and per output channel. Activations are
quantized on every call, per token (per row), so one loud frame or a stretch of padding
does not squeeze the resolution of every other frame.

Two kernels do the int8 x int8 -> int32 multiply, and the CPU decides which one is fast:
- `int_mm`: `torch._int_mm` (oneDNN), symmetric 8-bit activations. Fast where the CPU has
  VNNI (AVX512-VNNI, AVX-VNNI, AMX); without it oneDNN falls back to a reference loop that
  ran at 3 GOPS on an AVX2-only EPYC, 40x slower than FP32.
- `fbgemm`: the kernel behind `quantize_dynamic`, fast on plain AVX2 (2.1x FP32 there). It
  quantizes a whole input with one asymmetric 7-bit scale, so each row is first divided by
  its own peak: every row then spans [-1, 1] and gets the same share of the 7 bits as it
  would with its own scale. The row's peak multiplies the output back, exactly (linearity).

Why not a library: on the 2-core CPUs this service is tuned for, with Whisper base,
- `torch.ao.quantization.quantize_dynamic` (deprecated) is fast but its one scale per
  activation tensor raised the word error rate on the test speech by 4-6 points;
- torchao's `Int8DynamicActivationInt8WeightConfig` quantizes per token like this module
  and is as accurate, but its CPU path ran slower than FP32 (0.66 vs 0.9 clips/s).
The figures are in docs/performance.md and the benchmark re-measures them.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

Kernel = Literal["int_mm", "fbgemm"]

_INT8_MAX = 127.0
_EPS = 1e-8  # an all-zero row or channel gets a tiny scale instead of a division by zero
_VNNI_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_vnni() -> bool:
    """True where the CPU multiplies int8 pairs in one instruction (oneDNN's fast path)."""
    try:
        capabilities = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):  # private API: fall back to the public check
        return bool(torch.cpu._is_vnni_supported())
    return any(capabilities.get(name, False) for name in _VNNI_FEATURES)


@functools.cache
def _fbgemm_works() -> bool:
    """fbgemm needs x86 and torch's quantized tensors, which torch marks deprecated."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        _pack_for_fbgemm(torch.ones(2, 2), torch.ones(2))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def pick_kernel() -> Kernel:
    """`int_mm` with VNNI, else fbgemm where torch has it (x86), else `int_mm` (ARM)."""
    if cpu_has_vnni() or not _fbgemm_works():
        return "int_mm"
    return "fbgemm"


def _weight_scale(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().amax(dim=1).clamp(min=_EPS) / _INT8_MAX


def _pack_for_fbgemm(weight: torch.Tensor, scale: torch.Tensor) -> torch.ScriptObject:
    """fbgemm's prepacked weight (a TorchScript object, not a tensor)."""
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # Deprecated, not gone: _fbgemm_works() falls back to int_mm the day it is.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        quantized = torch.quantize_per_channel(
            weight, scale.to(torch.float64), zero_points, 0, torch.qint8
        )
    # The bias is added after the rows' peaks are multiplied back, so it is not packed.
    return torch.ops.quantized.linear_prepack(quantized, None)


class Int8Linear(nn.Module):
    """Stands in for an `nn.Linear` with int8 weights; takes and returns float32."""

    def __init__(self, linear: nn.Linear, kernel: Kernel | None = None) -> None:
        super().__init__()
        self.kernel: Kernel = kernel or pick_kernel()
        weight = linear.weight.detach().to(torch.float32)
        scale = _weight_scale(weight)
        self.register_buffer("weight_scale", scale)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32))
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        if self.kernel == "fbgemm":
            self._packed = _pack_for_fbgemm(weight, scale)
        else:
            # Stored (out, in) and passed to _int_mm transposed: oneDNN's int8 GEMM is up to
            # 3x faster for one-token decoder steps with this layout than with (in, out).
            self.register_buffer(
                "weight_int8", torch.round(weight / scale[:, None]).to(torch.int8).contiguous()
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        out = self._fbgemm(rows) if self.kernel == "fbgemm" else self._int_mm(rows)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*leading, self.out_features)

    def _int_mm(self, rows: torch.Tensor) -> torch.Tensor:
        # abs().amax, not vector_norm(ord=inf): the latter took 15x longer on CPU.
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=_EPS).div_(_INT8_MAX)
        rows_int8 = (rows / row_scale).round_().to(torch.int8)
        out = torch._int_mm(rows_int8, self.weight_int8.t()).to(torch.float32)
        # In place: these tensors are (tokens x out_features), the size that costs here
        # (an int32 x float32 multiply that converts on the fly was 10x slower still).
        return out.mul_(row_scale).mul_(self.weight_scale)

    def _fbgemm(self, rows: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, so AVX2's pairwise int16 sums cannot saturate
        # (8 bits cost 3 points of WER on the test speech).
        if rows.shape[0] == 1:  # one row: its own scale already, nothing to normalise
            return torch.ops.quantized.linear_dynamic(rows, self._packed, True)
        peak = rows.abs().amax(dim=1, keepdim=True).clamp_(min=_EPS)
        out = torch.ops.quantized.linear_dynamic(rows / peak, self._packed, True)
        return out.mul_(peak)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"int8 ({self.kernel})"
        )


def kernel_in_use(model: nn.Module) -> Kernel | None:
    """The kernel of `model`'s INT8 layers (one for all), or None where it has none."""
    return next((m.kernel for m in model.modules() if isinstance(m, Int8Linear)), None)


def quantize_linear_layers(model: nn.Module, kernel: Kernel | None = None) -> int:
    """Swap every float32 `nn.Linear` in `model` for an `Int8Linear`; returns how many.

    Embeddings, convolutions and norms stay float32: they are a small share of the
    compute. A weight tied to an embedding (Whisper's output projection) is copied, so
    the embedding keeps its float weights.
    """
    kernel = kernel or pick_kernel()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.weight.dtype == torch.float32:
                setattr(parent, name, Int8Linear(child, kernel))
                swapped += 1
    logger.info("INT8: %d linear layers quantized, %s kernel", swapped, kernel)
    return swapped
