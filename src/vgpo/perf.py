"""CPU speed helpers: the allocator setting the tiny model runs with, the machine's peak FLOP/s and the
network's FLOP count (``benchmarks/epoch_speed.py`` and docs/speed.md use them).

Peak = cores x clock x flops per cycle per core. Flops per cycle come from the CPU's vector units:
AVX-512 FMA has 16 fp32 lanes x 2 flops; most cores issue 2 per cycle (64 flops/cycle in fp32).
AVX512_BF16's VDPBF16PS multiplies 32 bf16 pairs into 16 fp32 sums per instruction (64 flops), 2 per
cycle on a core with two 512-bit pipes (128 flops/cycle). Intel's AMX (``amx_bf16``) does 1024 bf16
FMAs per cycle per core (2048 flops/cycle). FMA units per core and the clock are not in
/proc/cpuinfo reliably (a VM reports its TSC rate), so both can be given; docs/speed.md says how they
were measured on our machine.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

_KEEP_FREED_MEMORY_DONE = False


def keep_freed_memory() -> None:
    """Keep freed memory in the process instead of handing it back to the OS (glibc only; a no-op
    elsewhere). By default glibc serves allocations above a few MB with mmap and unmaps them on free,
    so every forward pass of the tiny model page-faults its activations in again: on our KVM guest a
    Shapes rollout forward (batch 128, fp32, 2 threads) took 0.83 s with that and 0.47 s without
    (docs/speed.md). The cost: the process keeps its peak memory."""
    global _KEEP_FREED_MEMORY_DONE
    if _KEEP_FREED_MEMORY_DONE or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)
    _KEEP_FREED_MEMORY_DONE = True


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn`` (matmuls, convolutions and attention, as
    torch.utils.flop_counter counts them: 2 per multiply-add; element-wise ops are not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def cpuinfo_field(name: str) -> str:
    """The first value of a /proc/cpuinfo field ("flags", "cpu MHz", "vendor_id"); "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    return set(cpuinfo_field("flags").split())


def cpuinfo_mhz() -> float:
    """The clock /proc/cpuinfo reports (a VM's TSC rate, often below the boost clock the cores run at)."""
    try:
        return float(cpuinfo_field("cpu MHz"))
    except ValueError:
        return 0.0


@dataclass
class Peak:
    """Theoretical peak of ``cores`` cores at ``clock_ghz`` for one precision."""

    precision: str
    cores: int
    clock_ghz: float
    flops_per_cycle: int  # per core
    unit: str  # what the figure assumes

    @property
    def gflops(self) -> float:
        return self.cores * self.clock_ghz * self.flops_per_cycle

    def describe(self) -> str:
        return (
            f"{self.precision}: {self.cores} cores x {self.clock_ghz:.2f} GHz x {self.flops_per_cycle} "
            f"flops/cycle ({self.unit}) = {self.gflops:.0f} GFLOP/s"
        )


def cpu_peak(precision: str, cores: int = 0, clock_ghz: float = 0.0, fma_units: int = 2) -> Peak:
    """The CPU's peak for ``precision`` ("fp32" or "bf16") from its flags; ``cores`` defaults to the
    processors this process may run on, ``clock_ghz`` to /proc/cpuinfo's."""
    cores = cores or len(os.sched_getaffinity(0))
    clock_ghz = clock_ghz or cpuinfo_mhz() / 1000.0
    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8  # fp32 lanes of one FMA (AVX-512 or AVX2)
    if precision == "fp32":
        return Peak("fp32", cores, clock_ghz, fma_units * lanes * 2, f"{fma_units} FMA x {lanes} fp32 lanes x 2")
    if precision != "bf16":
        raise ValueError(f"precision: expected fp32 or bf16, got {precision!r}")
    if "amx_bf16" in flags:
        return Peak("bf16", cores, clock_ghz, 2048, "AMX: 1024 bf16 FMA/cycle x 2")
    if "avx512_bf16" in flags:
        return Peak("bf16", cores, clock_ghz, fma_units * 64, f"{fma_units} VDPBF16PS x 32 bf16 pairs x 2")
    # No native bf16: oneDNN converts to fp32 and computes there.
    return Peak(
        "bf16", cores, clock_ghz, fma_units * lanes * 2, f"no native bf16: {fma_units} FMA x {lanes} fp32 lanes x 2"
    )


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> tuple[float, float]:
    """GFLOP/s of the best of ``repeats`` n x n matmuls, a practical ceiling for this machine's BLAS:
    (by wall time, by process CPU time / threads). On a shared machine the second is what the cores
    did while this process had them."""
    import time

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    wall = cpu = float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        a @ b
        wall = min(wall, time.perf_counter() - w)
        cpu = min(cpu, (time.process_time() - c) / torch.get_num_threads())
    return 2 * n**3 / wall / 1e9, 2 * n**3 / cpu / 1e9
