"""Blocks of work on one thread per core, each calling single-threaded BLAS.

conv2d splits the batch into cache-sized blocks of images (functional/conv.py). NumPy's
OpenBLAS would split each block's matmul between the cores and make them wait for each other
at every step of it; running whole blocks on worker threads instead (im2col, matmuls, col2im,
with BLAS on one thread inside each) lets each core go its own way, and a core that another
process takes only slows the blocks it has. SVHN conv1 forward + backward (Zen 5, 2 cores):
22.8 ms with OpenBLAS's threads, 20.1 ms on block threads; conv2 32.6 -> 27.2 ms.

`map_blocks` falls back to a plain loop (BLAS threading as NumPy has it) when there is one
thread, one block, TINYPACT_PARALLEL_KERNELS=0, or a BLAS that is not OpenBLAS (whose thread
count this module cannot set). Inside a worker, tinypact's Numba kernels run their serial
version (`in_worker`), compiled with nogil so that the workers run them side by side.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

# TINYPACT_PARALLEL_KERNELS=0 keeps tinypact on one thread: Numba kernels and conv2d's blocks (on
# a machine shared by several jobs, waiting for a descheduled worker thread can cost more than
# the second core gains).
PARALLEL = os.environ.get("TINYPACT_PARALLEL_KERNELS", "1") != "0"

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None  # (process id, threads): a forked child starts anew
_pool_lock = threading.Lock()
_openblas: dict | None = None


def in_worker() -> bool:
    """True on one of map_blocks' worker threads."""
    return getattr(_local, "worker", False)


def mapped_libraries(name_part: str) -> list[str]:
    """Paths of the files this process has mapped whose file name contains `name_part`
    (lower case), sorted (Linux: /proc/self/maps); [] elsewhere."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    return sorted({line.split()[-1] for line in maps.read_text().splitlines()
                   if line.split()[-1].startswith("/")
                   and name_part in Path(line.split()[-1]).name.lower()})


def loaded_openblas_libraries() -> list[ctypes.CDLL]:
    """The OpenBLAS builds this process has loaded (NumPy's first, then e.g. SciPy's); [] on
    other systems or before anything loaded one."""
    libraries = []
    for path in mapped_libraries("openblas"):
        try:
            libraries.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libraries


def openblas_library() -> ctypes.CDLL | None:
    """NumPy's OpenBLAS, found among the loaded libraries (Linux); None elsewhere."""
    import numpy  # noqa: F401  (loads OpenBLAS)

    libraries = loaded_openblas_libraries()
    return libraries[0] if libraries else None


def openblas_function(name: str):
    """OpenBLAS's `openblas_<name>` under whichever of its symbol spellings this build uses
    (scipy-openblas prefixes `scipy_` and suffixes `64_`), or None."""
    library = openblas_library()
    for symbol in (f"scipy_openblas_{name}64_", f"scipy_openblas_{name}", f"openblas_{name}64_",
                   f"openblas_{name}"):
        function = getattr(library, symbol, None) if library is not None else None
        if function is not None:
            return function
    return None


def _blas_threads() -> dict:
    global _openblas
    if _openblas is None:
        get, set_ = openblas_function("get_num_threads"), openblas_function("set_num_threads")
        if get is None or set_ is None:
            get = set_ = None  # both or neither
        else:
            get.restype, set_.argtypes = ctypes.c_int, (ctypes.c_int,)
        _openblas = {"get": get, "set": set_}
    return _openblas


@contextmanager
def _single_threaded_blas():
    blas = _blas_threads()
    before = blas["get"]()
    blas["set"](1)
    try:
        yield
    finally:
        blas["set"](before)


def workers() -> int:
    """Threads map_blocks would use: Numba's thread count (NUMBA_NUM_THREADS, one per core by
    default), 1 with TINYPACT_PARALLEL_KERNELS=0 or without a settable OpenBLAS."""
    import numba

    if not PARALLEL or in_worker():
        return 1
    if _blas_threads()["set"] is None:
        return 1
    return numba.get_num_threads()


def _mark_worker() -> None:
    _local.worker = True


def map_blocks(work, blocks: list) -> list:
    """[work(block) for block in blocks], the blocks spread over `workers()` threads when there
    are two or more of each; results in the blocks' order either way."""
    global _pool, _pool_key
    count = workers()
    if count < 2 or len(blocks) < 2:
        return [work(block) for block in blocks]
    with _pool_lock:
        if _pool_key != (os.getpid(), count):  # a fork's child has the pool but not its threads
            _pool = ThreadPoolExecutor(count, thread_name_prefix="tinypact-block",
                                       initializer=_mark_worker)
            _pool_key = (os.getpid(), count)
        pool = _pool
    with _single_threaded_blas():
        return list(pool.map(work, blocks))


def set_threads(count: int) -> int:
    """Run on `count` threads from now on (a sweep's --cpus-per-trial), as a process started
    with NUMBA_NUM_THREADS=count OPENBLAS_NUM_THREADS=count would: Numba's threads (at most the
    NUMBA_NUM_THREADS it started with), hence map_blocks' workers, and OpenBLAS's. Returns the
    Numba thread count set."""
    import numba

    count = max(1, min(int(count), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(count)
    blas = _blas_threads()
    if blas["set"] is not None:
        blas["set"](count)
    return count
