"""How tinypact sets up the process it runs in: thread waiting and freed memory.

A training step alternates NumPy's BLAS (conv and linear as matmuls, OpenBLAS's threads) with
parallel Numba kernels (im2col, pooling, batch-norm, quantizers; Numba's OpenMP threads) on the
same cores, and allocates hundreds of megabytes of short-lived arrays. Three defaults follow, each
measured on the SVHN step (benchmarks/train_step.py, batch 128, 2 threads, AMD EPYC Zen 5):

- OPENBLAS_THREAD_TIMEOUT=4: OpenBLAS's idle threads spin for about 0.1 s (2**28 cycles) after
  every call before they sleep; a Numba kernel that follows shares the cores with them. 2**4
  cycles is OpenBLAS's minimum. OpenBLAS reads it when it is loaded. When something loaded it
  before tinypact (NumPy imported first, or PyTorch, which imports NumPy), tinypact makes it
  read its settings again (`openblas_read_env`) and stops its threads (`blas_thread_shutdown_`,
  what OpenBLAS does before a fork); the next threaded call starts them with the short wait
  (`apply_openblas_thread_timeout`).
- OMP_WAIT_POLICY=PASSIVE: Numba's OpenMP threads spin between parallel kernels by default, and
  took a core from every BLAS call that followed one: 228 ms per step spinning, 163 ms passive.
  An OpenMP runtime reads it when it is loaded. PyTorch loads its own libgomp (globally), and
  Numba's OpenMP layer then binds to that one, loaded before tinypact could set the policy: in
  a process that imported PyTorch first the ResNet20 step (batch 64, 2 threads, Zen 1) took
  about 2100 ms of CPU instead of 970 (1750-2360 ms instead of 950-975 ms of wall time). When
  an OpenMP runtime is already loaded on import (and the user chose neither a policy nor a
  layer), tinypact gives Numba its own thread pool instead (NUMBA_THREADING_LAYER=workqueue,
  whose threads sleep when idle: about 1040 ms of CPU), `avoid_loaded_openmp`. Its one limit:
  parallel kernels must not be launched from two threads at once (tinypact's own block threads
  run the serial kernels).
- keep_freed_memory(): glibc returns large freed arrays to the kernel (arrays above 32 MiB are
  their own mmap, and the heap's top is trimmed), so every step page-faults its buffers in
  again, zero-filled by the kernel: 12,548 page faults and about 30 ms per step when each conv
  kept the batch's im2col rows, 7,872 with today's cache-sized blocks. With freed memory kept
  for reuse: none (benchmarks/train_step.py prints them). The cost: the process keeps the
  memory of its largest step (about 0.2 GiB for SVHN) after it.

A value the user set in the environment wins; TINYPACT_KEEP_FREED_MEMORY=0 keeps glibc's
behaviour. Other C libraries (macOS, musl) are left as they are.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_LIMIT = 1 << 30  # allocations up to 1 GiB come from the heap; 1 GiB of free heap is kept


def set_thread_waits() -> None:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def avoid_loaded_openmp(user_policy: bool) -> bool:
    """Run Numba's parallel kernels on its own thread pool (the workqueue layer) when an OpenMP
    runtime was loaded before tinypact: its wait policy was fixed then, spinning by default.
    Left alone when the user set OMP_WAIT_POLICY (`user_policy`) or NUMBA_THREADING_LAYER.
    Returns whether it switched."""
    import sys

    from tinypact._threads import mapped_libraries

    if user_policy or "NUMBA_THREADING_LAYER" in os.environ:
        return False
    if not any(mapped_libraries(name) for name in ("libgomp", "libiomp", "libomp")):
        return False
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"  # read when Numba is imported
    numba = sys.modules.get("numba")
    if numba is not None:  # imported already: read when it starts its threads
        numba.config.THREADING_LAYER = "workqueue"
    return True


def apply_openblas_thread_timeout() -> int:
    """Give every OpenBLAS already loaded the OPENBLAS_THREAD_TIMEOUT of the environment, which
    it read too early if it was loaded before tinypact; returns how many needed it. Linux only
    (the libraries are found in /proc/self/maps); a build without these functions is left as is.
    """
    from tinypact._threads import loaded_openblas_libraries

    wanted = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")
    if not wanted.isdigit():
        return 0
    changed = 0
    for library in loaded_openblas_libraries():
        timeout = getattr(library, "openblas_thread_timeout", None)
        read_env = getattr(library, "openblas_read_env", None)
        shutdown = getattr(library, "blas_thread_shutdown_", None)
        if timeout is None or read_env is None or shutdown is None:
            continue
        timeout.restype = ctypes.c_int
        if timeout() == int(wanted):
            continue
        read_env()  # the environment's values, including this timeout
        shutdown()  # the threads keep the old wait until they are started again
        changed += 1
    return changed


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel.
    Returns whether it applied (glibc, and not turned off by TINYPACT_KEEP_FREED_MEMORY=0)."""
    if os.environ.get("TINYPACT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Setting either threshold also turns off glibc's own adjustment of the other: set both.
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_LIMIT) and mallopt(M_TRIM_THRESHOLD, KEEP_LIMIT))


def configure() -> None:
    user_policy = "OMP_WAIT_POLICY" in os.environ
    set_thread_waits()
    avoid_loaded_openmp(user_policy)
    apply_openblas_thread_timeout()
    keep_freed_memory()
