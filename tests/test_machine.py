"""benches.machine: the machine description written into benchmark results."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
from benches.machine import SIMD_FEATURES, describe, parse_cpuinfo

import localrank

# Trimmed from real machines: one processor block each, unless said otherwise.
PI5 = """\
processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

Revision\t: d04170
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""

PI4 = """\
processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08
"""

GRAVITON3 = """\
processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs \
paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""

X86 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""

# A phone: little cores without i8mm next to big cores with it.
BIG_LITTLE = """\
processor\t: 0
Features\t: fp asimd asimddp bf16
CPU implementer\t: 0x41
CPU part\t: 0xd46

processor\t: 1
Features\t: fp asimd asimddp i8mm bf16 sve2
CPU implementer\t: 0x41
CPU part\t: 0xd47
"""


@pytest.mark.parametrize(
    ("text", "board", "model", "features"),
    [
        (PI5, None, "ARM Cortex-A76 (Raspberry Pi 5 Model B Rev 1.0)", ["asimd", "asimddp"]),
        (PI4, "Raspberry Pi 4 Model B", "ARM Cortex-A72 (Raspberry Pi 4 Model B)", ["asimd"]),
        (
            GRAVITON3,
            None,
            "ARM Neoverse-V1",
            # svei8mm and svebf16 are other features: only exact names count.
            ["asimd", "asimddp", "i8mm", "sve", "bf16"],
        ),
        (X86, None, "AMD EPYC 7B13", ["avx2", "fma"]),
        # Only what every core has: the little cores lack i8mm and sve2.
        (BIG_LITTLE, None, "ARM Cortex-A510 + ARM Cortex-A710", ["asimd", "asimddp", "bf16"]),
        ("", None, "unknown", []),
    ],
)
def test_parse_cpuinfo(text: str, board: str | None, model: str, features: list[str]) -> None:
    assert parse_cpuinfo(text, board) == (model, features)


def test_unknown_arm_part_is_named_by_number() -> None:
    text = "Features\t: asimd\nCPU implementer\t: 0x61\nCPU part\t: 0x022\n"
    assert parse_cpuinfo(text) == ("Apple part 0x022", ["asimd"])


def test_describe_this_machine() -> None:
    info = describe()
    assert set(info) == {
        "arch",
        "cpu_model",
        "simd_features",
        "kernels_available",
        "kernel_default",
        "cores",
    }
    assert info["arch"] == platform.machine()
    assert info["kernels_available"] == localrank.available_kernels()
    assert info["kernels_available"][0] == "scalar"
    assert info["kernel_default"] == localrank.default_kernel()
    assert info["kernel_default"] in info["kernels_available"]
    assert isinstance(info["cores"], int) and info["cores"] >= 1
    assert set(info["simd_features"]) <= set(SIMD_FEATURES)
    assert info["cpu_model"]
    json.dumps(info)  # goes into the bench's JSON as it is


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_describe_agrees_with_kernel_detection() -> None:
    """The kernel paths the core detected imply the features /proc/cpuinfo lists."""
    info = describe()
    assert info["cpu_model"] != "unknown"
    needs = {"avx2": {"avx2", "fma"}, "neon": {"asimd"}, "sdot": {"asimd", "asimddp"}}
    for kernel in info["kernels_available"]:
        assert needs.get(kernel, set()) <= set(info["simd_features"]), kernel
