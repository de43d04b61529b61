"""Shared pytest setup: the header names the kernel paths every path-parametrised test runs."""

from __future__ import annotations

import localrank


def pytest_report_header() -> list[str]:
    return [
        f"localrank kernels available: {', '.join(localrank.available_kernels())} "
        f"(default {localrank.default_kernel()})"
    ]
