"""Machine and software description recorded with benchmark results."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def _cpuinfo(fields: tuple[str, ...]) -> dict[str, str]:
    """The first value of each of `fields` in /proc/cpuinfo (empty where there is none)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() in fields:
                    found.setdefault(name.strip(), value.strip())
                if len(found) == len(fields):
                    break
    except OSError:
        pass
    return found


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    memory = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal"):
                    memory = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    cpu = _cpuinfo(("model name", "flags"))
    return {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_bf16_flags": sorted({"avx512_bf16", "amx_bf16"} & set(cpu.get("flags", "").split())),  # native bf16
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "bitsandbytes": _version("bitsandbytes"),
        "load_average_1_5_15min": load_average(),
    }


def thread_contention_check(threads: int, repeats: int = 200) -> dict:
    """Time a small matrix-vector product (a decode-step GEMV) on 1 thread and on `threads` threads.

    On a quiet machine more threads are not slower; when other processes occupy the cores, multi-threaded kernels
    wait for descheduled threads and become many times slower than single-threaded ones, which invalidates timings.
    """
    import time

    import torch

    previous = torch.get_num_threads()
    weight, vector = torch.randn(1536, 576), torch.randn(1, 576)
    out = {}
    try:
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            for _ in range(20):
                torch.nn.functional.linear(vector, weight)
            start = time.perf_counter()
            for _ in range(repeats):
                torch.nn.functional.linear(vector, weight)
            out[f"gemv_ms_{n}_threads"] = round((time.perf_counter() - start) / repeats * 1000, 4)
    finally:
        torch.set_num_threads(previous)
    out["contended"] = out[f"gemv_ms_{threads}_threads"] > 2.0 * out["gemv_ms_1_threads"]
    return out
