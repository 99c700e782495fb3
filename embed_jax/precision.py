"""Which compute dtype is fast on this machine: `compute_dtype='auto'`.

bfloat16 products (accumulated in float32) are the fast path where the
hardware multiplies bfloat16 natively: TPUs, NVIDIA GPUs from Ampere on
(compute capability 8.0), and x86 CPUs with AMX or AVX-512 BF16. Elsewhere
(e.g. a CPU without them) XLA emulates bfloat16 and float32 is faster, so
'auto' keeps float32 there.
"""

from __future__ import annotations

import functools

import jax

AUTO = "auto"
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def has_fast_bfloat16(device: jax.Device | None = None) -> bool:
  """True when `device` (default: jax's first) multiplies bfloat16 natively."""
  device = device or jax.devices()[0]
  if device.platform == "tpu":
    return True
  if device.platform == "gpu":
    capability = getattr(device, "compute_capability", None)
    try:
      return capability is not None and float(capability) >= 8.0
    except (TypeError, ValueError):
      return False
  return device.platform == "cpu" and any(f in _cpu_flags() for f in CPU_BF16_FLAGS)


def resolve(compute_dtype: str | None) -> str | None:
  """'auto' -> 'bfloat16' where it is fast (see the module docstring), else None (float32)."""
  if compute_dtype != AUTO:
    return compute_dtype
  return "bfloat16" if has_fast_bfloat16() else None
