"""Keeping a CPU process's memory honest.

glibc's malloc keeps memory freed by PyTorch in its heaps instead of returning it to the system: during a training
step the activations freed layer by layer pile up, and the process's peak RSS ends up near twice the memory actually
in use (measured: 7.3 GB peak for 4.2 GB live on SmolLM2, LoRA, batch 8). Calling ``malloc_trim(0)`` after every
few transformer layers' forward pass, and again as the backward pass reaches them, returns those pages: the peak
falls to about the memory in use (4.6 GB) for a few percent more time. It is a no-op off Linux/glibc and on GPUs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from typing import Any

import torch

_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    return _LIBC


def release_freed_memory() -> None:
    """Return free heap pages to the operating system (glibc only)."""
    lib = _libc()
    if lib:
        lib.malloc_trim(0)


TRIMS_PER_PASS = 4


def install_memory_release(model: Any, device: torch.device | str) -> int:
    """Trim the heap after every few transformer layers' forward pass (and as the backward pass reaches them) on
    CPU; returns how many hooks were added."""
    if torch.device(device).type != "cpu" or not _libc():
        return 0
    from tunelab.errors import ConfigError
    from tunelab.models.adapters import transformer_layers, unwrap

    try:
        layers = transformer_layers(unwrap(model))
    except ConfigError:
        return 0
    # A trim walks the whole heap: a few per pass return nearly all the memory that one per layer does, at a
    # fraction of the cost (SmolLM2, 30 layers, bf16 LoRA step: every layer +37% step time, every 8th +3%, the same
    # peak RSS).
    stride = max(1, math.ceil(len(layers) / TRIMS_PER_PASS))
    hooked = [layer for i, layer in enumerate(layers) if (i + 1) % stride == 0 or i == len(layers) - 1]
    for layer in hooked:
        layer.register_forward_hook(_release_after_forward)
    return len(hooked)


def _release_after_forward(module: Any, inputs: Any, output: Any) -> None:
    """Trim now (the layer's temporaries are freed), and again when the backward pass reaches this layer's output
    (the layer above has then freed its backward temporaries)."""
    release_freed_memory()
    hidden = output[0] if isinstance(output, (tuple, list)) else output
    if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
        hidden.register_hook(_release_in_backward)


def _release_in_backward(grad: torch.Tensor) -> None:
    release_freed_memory()


def peak_memory_gb() -> float:
    """The peak memory of this process so far: allocated GPU memory on CUDA, else the peak resident set (RSS)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def hardware_summary() -> str:
    """What this process trains on, in words: the GPUs (count, name, memory), else the CPU (model, cores)."""
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        return f"{count} x {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return f"Apple GPU (MPS), {platform.machine()}"
    name = _cpu_name() or platform.processor() or platform.machine() or "unknown CPU"
    return f"CPU: {name}, {os.cpu_count() or 1} cores"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
