"""What every benchmark records beside its numbers (date, host, devices), and how it prints and saves them."""

from __future__ import annotations

import datetime
import json
import os
import platform
from typing import Any

import jax


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (e.g. "AMD EPYC"), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """{"date", "host", "device", "jax"}: the machine and card the numbers were measured on."""
    device = jax.devices()[0]
    return {
        "date": datetime.date.today().isoformat(),
        "host": f"{platform.node()}: {cpu_name()}, {os.cpu_count()} cpus",
        "device": f"{jax.device_count()} x {device.device_kind} ({device.platform})",
        "jax": jax.__version__,
    }


def emit(results: dict[str, Any], path: str | None) -> None:
    """Prints `results` as JSON and, given a path, writes them there."""
    print(json.dumps(results, indent=2))
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
