"""Which precision training runs in.

On a GPU with bf16 the weights themselves are bf16 (the reference's setting), and "auto" picks
it. On the CPU, bf16 asked for (`bf16: true`) is mixed precision instead: float32 weights,
optimiser and loss, with the products in bf16 under `torch.autocast`. On a CPU with native
bf16 instructions (AVX512-BF16 or AMX) that built the toy model 1.55x faster and trained the
demo's iteration 1.15x faster, but the toy built so was worse (BENCHMARKS.md, "Training"), so
"auto" keeps float32 on the CPU; without those instructions bf16 is emulated and slower.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

Bf16 = Literal["auto"] | bool


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    return bool(
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )


def use_bf16(setting: Bf16, on_cpu: bool) -> bool:
    """The bf16 setting resolved: "auto" is bf16 on a GPU that supports it, float32 on the CPU."""
    if setting != "auto":
        return bool(setting)
    return not on_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cpu_autocast(enabled: bool) -> AbstractContextManager:
    """bf16 autocast on the CPU when `enabled`: float32 weights, bf16 products."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else nullcontext()
