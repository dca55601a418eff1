"""Process memory: hand freed heap memory back to the system (glibc), the peak resident size, the memory available.

glibc's malloc raises its mmap threshold after large blocks are freed, so later large tensors come
from the heap, and heap memory freed between differently sized images is kept rather than
returned. A method that runs the backbone at each image's own size (the Feature Dictionary)
then creeps up in resident memory with every new size: 60 magnetic-tile training images and
240 test images took a process to 3.0 GB; ``malloc_trim`` whenever the size changes keeps it at 1.4 GB.
(Process-wide ``mallopt`` settings would keep it lower but halve PatchCore's speed, so flawscope
does not set them.)

Nothing here runs at import time: the C library is looked up at the first call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return the heap's free pages to the system; a no-op where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def available_mib() -> float | None:
    """Memory this process can take now without swapping, in MiB: the system's ``MemAvailable``, or less where a
    cgroup (a container's limit) leaves less; None where ``/proc/meminfo`` does not say."""
    system = _meminfo_available_kib()
    if system is None:
        return None
    limit = _cgroup_room_kib()
    return (system if limit is None else min(system, limit)) / 1024


def _meminfo_available_kib() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room_kib() -> int | None:
    """What the cgroup (v2) memory limit leaves: ``memory.max - memory.current``; None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return (int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())) // 1024
    except (OSError, ValueError):
        return None


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process in MiB; None where the platform tells neither (Windows).

    On Linux, the high-water mark of this process's own memory (``VmHWM``): ``ru_maxrss`` also counts the memory of
    the process that started it (a child started by fork or vfork and exec carries its parent's peak into its
    own), so a small process started by a large one -- a benchmark's or a test's child -- would report its
    parent's size (measured: 1,514 MiB for a child of 14). Elsewhere ``ru_maxrss`` (macOS reports bytes)."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
