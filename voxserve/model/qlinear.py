"""Quantized replacements for ``nn.Linear``: int8 weight-only, int8 dynamic (CPU) and fp8 (E4M3, CUDA).

Each module keeps the Linear's contract (``[..., in_features] -> [..., out_features]`` in the input's dtype) so
it drops into the model unchanged. Forward passes are free of host syncs, ``.item()`` and data-dependent Python
branches (only shapes, dtypes and devices decide), so they run inside captured CUDA graphs; dynamic scales are
computed on the device. Which module replaces which Linear is decided in ``quant.py``, never here.

Quantized weights and their float32 scales are fixed-dtype buffers: ``model.half()`` / ``model.to(bf16)`` moves
them between devices but never re-casts them (a cast would turn fp8 weights into bf16 and round the scales).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fp8rows import FP8, FP8_MAX, quantize_rows
from .fp8rows import TINY as _TINY  # floor for an all-zero row's / token's amax

INT8_MAX = 127  # symmetric: -127..127, so negating a weight never overflows


def cpu_has(feature: str) -> bool:
    """Whether this CPU has an instruction-set feature as torch names it ("avx512_bf16", "avx512_vnni", ...)."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    return bool(caps and caps().get(feature, False))


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """[N, K] float -> (int8 [N, K], float32 scale [N]) with per-output-channel symmetric scales."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=_TINY) / INT8_MAX
    q = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_fp8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """[N, K] float -> (E4M3 [N, K], float32 scale [N]): each row's amax maps to the format's largest value."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=_TINY) / FP8_MAX
    return (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class _QuantLinear(nn.Module):
    """Shared plumbing: shape bookkeeping, fixed-dtype buffers, an optional bias that follows the model dtype."""

    _fixed: tuple[str, ...] = ()  # buffers whose dtype must survive model.to(dtype)

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's own signature
        fixed = {name: self._buffers[name] for name in self._fixed if self._buffers[name] is not None}
        super()._apply(fn, recurse)
        for name, before in fixed.items():
            after = self._buffers[name]
            if after.dtype != before.dtype:  # a dtype cast: keep the original values, take only the device
                self._buffers[name] = before.to(after.device)
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Int8WeightOnlyLinear(_QuantLinear):
    """int8 weights with per-output-channel scales; activations stay in floating point.

    CUDA: ``(x @ int8_weight.T) * scale``, the int8 -> x.dtype conversion inside the matmul. Eager this reads the
    int8 weight and writes a full-size temporary, so it is no faster than bf16 (about 1.3-2x slower per Linear
    at decode sizes); under torch.compile Inductor fuses the conversion into the matmul and a memory-bound
    decode step reads half the bytes of bf16. Its purpose there is memory (half of bf16's weight bytes).
    CPU: bf16 compute when the CPU has native bf16 (AVX512-BF16/AMX): ``torch._weight_int8pack_mm`` for few
    rows (decode steps), dequantize-then-matmul for many (encoder windows), the crossover measured on a 2-core
    AVX512 machine; without native bf16, dequantize to the input dtype.
    """

    _fixed = ("weight", "scale")
    PACK_MAX_ROWS = 32  # _weight_int8pack_mm wins up to ~32 rows, dequantize + bf16 GEMM beyond

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        q, scale = quantize_int8(linear.weight)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self.cpu_bf16 = cpu_has("avx512_bf16") or cpu_has("amx_bf16")

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and self.cpu_bf16:
            return self._cpu_bf16(x)
        y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def _cpu_bf16(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        scale = self.scale.to(torch.bfloat16)
        if x2.shape[0] <= self.PACK_MAX_ROWS:
            y = torch._weight_int8pack_mm(x2, self.weight, scale)
        else:
            y = F.linear(x2, self.weight.to(torch.bfloat16) * scale[:, None])
        y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class Int8DynamicLinear(_QuantLinear):
    """CPU: int8 weights (per output channel) times activations quantized at run time, int32 accumulation.

    Runs FBGEMM's dynamic quantized linear (``torch.ops.quantized.linear_dynamic``, VNNI kernels), measured the
    fastest int8 GEMM torch offers on an AVX512 CPU, 4-6x faster than fp32 at encoder sizes. Its activation
    quantization is per tensor (uint8 from the min/max of the whole input), so a row's numerics depend slightly
    on the other rows of its batch. The full 8-bit activation range is used only where VNNI instructions do the
    int8 dot products: older AVX2/AVX512 kernels sum pairs of u8*s8 products in saturating int16, which needs
    the 7-bit ``reduce_range`` (twice the rounding error: 1.9% vs 1.0% relative output error measured).
    Without the quantized engine (a torch built without it) the fallback is ``torch._int_mm`` with per-row
    symmetric activation scales.
    """

    _fixed = ("weight", "scale")

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        q, scale = quantize_int8(linear.weight)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self._packed = None
        self.reduce_range = not cpu_has("avx512_vnni")
        self._pack()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._pack())

    @staticmethod
    def fbgemm_available() -> bool:
        return (
            hasattr(torch.ops.quantized, "linear_dynamic")
            and "x86" in torch.backends.quantized.supported_engines
        )

    def _pack(self) -> None:
        if not self.fbgemm_available() or self.weight.device.type != "cpu":
            self._packed = None
            return
        # A per-channel quantized tensor built from our own int8 values, so every backend uses the same integers.
        # torch deprecates quantized tensor types (pytorch#184982) but still ships these kernels and nothing
        # faster on the CPU; the warning is silenced here and the fallback below takes over once they go.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(
                self.weight, self.scale.double(), torch.zeros_like(self.scale, dtype=torch.long), 0
            )
        bias = self.bias.float() if self.bias is not None else None
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            raise RuntimeError("Int8DynamicLinear runs on the CPU only; use 'int8' or 'fp8' on CUDA")
        if self._packed is not None:
            return torch.ops.quantized.linear_dynamic(x.float(), self._packed, self.reduce_range).to(x.dtype)
        return self._int_mm(x)

    def _int_mm(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features).float()
        xs = x2.abs().amax(dim=1, keepdim=True).clamp(min=_TINY) / INT8_MAX
        xq = torch.round(x2 / xs).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        y = torch._int_mm(xq, self.weight.t()).float() * xs * self.scale
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


class Fp8Linear(_QuantLinear):
    """E4M3 weights (per-output-channel scales) times E4M3 activations through ``torch._scaled_mm``.

    Activations are scaled per tensor by a static calibrated scale (``input_scale``: amax over representative
    audio times a margin; values beyond it saturate at +-448 instead of overflowing to NaN) or, without one,
    per row (token) by their own amax, computed on the device. ``_scaled_mm`` (torch 2.11 and 2.13 alike) takes
    a row-major [M, K] and a column-major [K, N] operand, K and N multiples of 16, float32 scales shaped [M, 1]
    and [1, N] for row-wise scaling (both contiguous), an optional bias in the output dtype (bf16/fp16 only) and
    ``out_dtype``; it accumulates in float32.
    """

    _fixed = ("weight", "weight_scale", "input_scale")

    def __init__(self, linear: nn.Linear, input_scale: float | None = None) -> None:
        super().__init__(linear)
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(
                f"fp8 needs both Linear dimensions divisible by 16, got {linear.in_features}x{linear.out_features}"
            )
        if input_scale is not None and not input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        q, scale = quantize_fp8(linear.weight)
        self.register_buffer(
            "weight", q
        )  # [N, K] row-major; .t() is the column-major [K, N] _scaled_mm wants
        self.register_buffer("weight_scale", scale[None, :].contiguous())  # [1, N]
        device = linear.weight.device
        static = (
            None if input_scale is None else torch.tensor([[input_scale]], dtype=torch.float32, device=device)
        )
        self.register_buffer("input_scale", static)  # [1, 1] or None (dynamic)

    def forward(self, x: Tensor, *, pre: str | None = None, norm: nn.LayerNorm | None = None) -> Tensor:
        """``pre``: "norm" applies ``norm`` (the layer norm before this Linear) to x first, "gelu" the exact
        GELU, both inside the pass that quantizes x (``norm_linear`` and ``gelu_linear`` say when)."""
        norm_args = None if norm is None else (norm.weight, norm.bias, norm.eps)
        xq, xs = quantize_rows(x.reshape(-1, self.in_features), self.input_scale, pre=pre, norm=norm_args)
        out_dtype = x.dtype
        fused_bias = self.bias is not None and out_dtype in (torch.bfloat16, torch.float16)
        y = torch._scaled_mm(
            xq,
            self.weight.t(),
            scale_a=xs,
            scale_b=self.weight_scale,
            bias=self.bias.to(out_dtype) if fused_bias else None,
            out_dtype=out_dtype,
        )
        if self.bias is not None and not fused_bias:  # _scaled_mm takes no bias for a float32 output
            y = y + self.bias.to(out_dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kind = "static" if self.input_scale is not None else "dynamic per-token"
        return f"{super().extra_repr()}, activations={kind}"


QUANT_LINEARS = (Int8WeightOnlyLinear, Int8DynamicLinear, Fp8Linear)


# Whether an fp8 Linear computes the layer norm / GELU before it inside its input's quantization (fp8rows'
# ``pre``: one pass over x instead of the torch operation's write and the quantization's read back). Off: on an
# H100 (bench/profile_encoder.py, 52 live windows, 7,550 positions, large-v3, 2026-12-08) the folded fp8 pass took
# 27.25 ms against 26.22 with the torch operations, its quantization 9.44 ms against 5.17 + the norms' and GELU's
# ~3.3 (fp16: 27.47). The folded kernel stays, tested (tests/gpu/test_quant_cuda.py), for when it is faster.
FOLD_INTO_FP8 = False


def norm_linear(norm: nn.LayerNorm, x: Tensor, linear: nn.Module) -> Tensor:
    """``linear(norm(x))``; with ``FOLD_INTO_FP8`` an fp8 Linear computes the norm inside its input's
    quantization."""
    if FOLD_INTO_FP8 and isinstance(linear, Fp8Linear):
        return linear(x, pre="norm", norm=norm)
    return linear(norm(x))


def gelu_linear(x: Tensor, linear: nn.Module) -> Tensor:
    """``linear(gelu(x))`` (the MLP's second half); with ``FOLD_INTO_FP8`` the GELU inside an fp8 Linear's input
    quantization."""
    if FOLD_INTO_FP8 and isinstance(linear, Fp8Linear):
        return linear(x, pre="gelu")
    return linear(F.gelu(x))


def fuse_output_features(modules: Sequence[nn.Module]) -> nn.Module | None:
    """One module computing the concatenated outputs of ``modules``, which read the same input (the query, key
    and value projections): one GEMM instead of three, and for fp8 one quantization of the input. Plain Linear
    layers give a Linear; quantized ones a module of their type, whose per-output-channel scales concatenate
    exactly, so each output equals its own module's. A missing bias is zeros. The parts' weights become views of
    the fused weight (stored once). None when the modules are not all of one type (Linear or quantized) over one
    input width, or (fp8) do not share their static input scale."""
    first = modules[0]
    if type(first) not in (nn.Linear, *QUANT_LINEARS) or any(type(m) is not type(first) for m in modules):
        return None
    if any(
        m.in_features != first.in_features
        or m.weight.dtype != first.weight.dtype
        or m.weight.device != first.weight.device
        for m in modules
    ):
        return None
    if isinstance(first, Fp8Linear):
        scales = [m.input_scale for m in modules]
        if scales[0] is None:
            if any(s is not None for s in scales):
                return None
        elif any(s is None or not torch.equal(s, scales[0]) for s in scales):
            return None
    out_features = sum(m.out_features for m in modules)
    weight = _adjacent_rows([m.weight.detach() for m in modules])
    if weight is None:
        weight = torch.cat([m.weight.detach() for m in modules])
    bias = None
    if any(m.bias is not None for m in modules):
        like = next(m.bias for m in modules if m.bias is not None).detach()
        bias = torch.cat(
            [m.bias.detach() if m.bias is not None else like.new_zeros(m.out_features) for m in modules]
        )
    start = 0
    for m in modules:  # the parts' weights become views into the fused one: the values are held once
        part = weight[start : start + m.out_features]
        if type(m) is nn.Linear:
            m.weight = nn.Parameter(part, requires_grad=False)
        else:
            m._buffers["weight"] = part
        start += m.out_features
    if type(first) is nn.Linear:
        fused = nn.Linear(first.in_features, out_features, bias=bias is not None, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            fused.bias = nn.Parameter(bias, requires_grad=False)
        return fused
    fused = copy.copy(first)
    fused._buffers = dict(first._buffers)
    fused.out_features = out_features
    fused._buffers["weight"] = weight
    if isinstance(first, Fp8Linear):
        fused._buffers["weight_scale"] = torch.cat([m.weight_scale for m in modules], dim=1).contiguous()
    else:
        fused._buffers["scale"] = torch.cat([m.scale for m in modules])
    fused._buffers["bias"] = bias
    if isinstance(fused, Int8DynamicLinear):
        fused._pack()
    return fused


def _adjacent_rows(parts: Sequence[Tensor]) -> Tensor | None:
    """The 2-D tensor whose consecutive row blocks ``parts`` are (parts fused before, by an earlier engine on the
    same model), or None: fusing them again then reuses those weights instead of holding another copy."""
    first = parts[0]
    offset = first.storage_offset()
    for t in parts:
        if (
            not t.is_contiguous()
            or t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
            or t.storage_offset() != offset
        ):
            return None
        offset += t.numel()
    rows = sum(t.shape[0] for t in parts)
    return first.as_strided((rows, first.shape[1]), first.stride(), first.storage_offset())
