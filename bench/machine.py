"""What machine a benchmark ran on: shared by the scripts in bench/."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """Platform, CPU model and CPU count, on one line."""
    return f"{platform.platform()}; {cpu_model()}; {os.cpu_count()} CPUs"
