"""What machine a benchmark ran on: architecture, CPU model, SIMD features and kernel paths.

Benchmark numbers mean little without the CPU behind them, and on ARM the same binary takes
different paths on different cores (SDOT needs ``asimddp``; a Raspberry Pi 4 lacks it, a
Raspberry Pi 5 and Graviton 2+ have it). :func:`describe` gathers what a result file should
carry; the bench suite writes it next to its timings.

The CPU model and features come from ``/proc/cpuinfo`` (Linux, Android). Elsewhere they are
``"unknown"`` and ``[]``; the kernel paths are always the core's own detection.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TypedDict

from localrank._core import available_kernels, default_kernel

__all__ = ["SIMD_FEATURES", "Machine", "describe", "parse_cpuinfo"]

#: The features worth recording, in the order they are reported: x86-64's (``flags``) then
#: aarch64's (``Features``) names as /proc/cpuinfo spells them. ``asimddp`` is SDOT, ``i8mm``
#: the int8 matrix multiply, ``sve``/``sve2`` the scalable vectors.
SIMD_FEATURES: tuple[str, ...] = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "sve2",
    "bf16",
)

# /proc/cpuinfo on aarch64 names the core only by numbers: "CPU implementer" and "CPU part".
_IMPLEMENTERS = {
    "0x41": "ARM",
    "0x42": "Broadcom",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x51": "Qualcomm",
    "0x61": "Apple",
    "0xc0": "Ampere",
}
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
}


class Machine(TypedDict):
    """What :func:`describe` returns; every value is JSON-serialisable."""

    #: ``platform.machine()``: ``x86_64``, ``aarch64``, ...
    arch: str
    #: The CPU's name, e.g. ``AMD EPYC 7B13`` or ``ARM Cortex-A76 (Raspberry Pi 5 Model B
    #: Rev 1.0)``; cores of different kinds are joined with `` + ``. ``unknown`` if not found.
    cpu_model: str
    #: The :data:`SIMD_FEATURES` that every core has, in that order.
    simd_features: list[str]
    #: The core's kernel paths this machine can run, worst first.
    kernels_available: list[str]
    #: The path used when none is forced (``LOCALRANK_KERNEL`` or the best available).
    kernel_default: str
    #: Logical CPUs this process may run on.
    cores: int


def _arm_core(implementer: str, part: str) -> str:
    vendor = _IMPLEMENTERS.get(implementer, f"implementer {implementer}")
    if implementer == "0x41" and part in _ARM_PARTS:
        return f"{vendor} {_ARM_PARTS[part]}"
    return f"{vendor} part {part}"


def parse_cpuinfo(text: str, board: str | None = None) -> tuple[str, list[str]]:
    """The CPU model and the :data:`SIMD_FEATURES` of a ``/proc/cpuinfo`` text.

    Args:
        text: the file's contents.
        board: the board's name when the file does not give one (``Model`` is there on a
            Raspberry Pi); ``describe`` reads it from the device tree.

    Returns:
        ``(cpu_model, simd_features)``. A feature counts only if every processor lists it.
    """
    names: list[str] = []
    feature_sets: list[set[str]] = []
    implementer = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "model name" and value not in names:
            names.append(value)
        elif key in ("flags", "Features"):
            feature_sets.append(set(value.split()))
        elif key == "CPU implementer":
            implementer = value.lower()
        elif key == "CPU part":
            core = _arm_core(implementer, value.lower())
            if core not in names:
                names.append(core)
        elif key == "Model" and board is None:
            board = value
    model = " + ".join(names) if names else "unknown"
    if board:
        model = f"{model} ({board})"
    common = set.intersection(*feature_sets) if feature_sets else set()
    return model, [f for f in SIMD_FEATURES if f in common]


def _read(path: str) -> str | None:
    try:
        # The device tree's strings end in NUL.
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def describe() -> Machine:
    """Describe this machine for a benchmark result.

    Returns:
        A :class:`Machine`: ``arch``, ``cpu_model``, ``simd_features``,
        ``kernels_available``, ``kernel_default`` and ``cores``.

    Raises:
        KernelError: when ``LOCALRANK_KERNEL`` names a path this machine cannot run.
    """
    cpuinfo = _read("/proc/cpuinfo") or ""
    board = _read("/sys/firmware/devicetree/base/model")
    model, features = parse_cpuinfo(cpuinfo, board or None)
    if model == "unknown" and platform.processor():
        model = platform.processor()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on every OS
        cores = os.cpu_count() or 1
    return Machine(
        arch=platform.machine(),
        cpu_model=model,
        simd_features=features,
        kernels_available=list(available_kernels()),
        kernel_default=default_kernel(),
        cores=cores,
    )
