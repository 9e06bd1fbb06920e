"""A per-process memory cap, so one document cannot exhaust the machine: allocations past it raise
``MemoryError`` in that process only, which the task shell records as the job's failure (``out_of_memory``).

The cap is on address space (``RLIMIT_AS``), the one limit Linux enforces at allocation time without cgroups.
Address space runs above resident memory (a warm ingest child maps about 2.4 GB for about 1 GB resident), so
the cap is set well above what a normal document needs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import resource

logger = logging.getLogger(__name__)


def cap_address_space(megabytes: int) -> None:
    """Limit this process (and what it forks) to ``megabytes`` of address space; never raises the hard limit."""
    wanted = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    logger.info("address space capped at %d MiB", wanted // (1024 * 1024))


def describe() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return "no limit set" if soft == resource.RLIM_INFINITY else f"{soft // (1024 * 1024)} MiB of address space"


def release_free_memory() -> None:
    """After a big task: collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise,
    so an ingest child's resident size would ratchet up document by document until it is recycled)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc
            ctypes.CDLL(name).malloc_trim(0)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def prefer_mmap_for_large_blocks(threshold: int = 128 * 1024) -> None:
    """Serve allocations above ``threshold`` with their own mappings, returned to the OS when freed. glibc
    otherwise raises the threshold as big blocks come and go, and the embedding loop's activations stay
    resident: bench.ingest saw a child's peak fall from about 1.5 GB to 1.2 GB on the 872-page DOCX."""
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, threshold)
