"""tinypact/runtime.py: the process settings tinypact makes on import (thread waits, freed memory)."""
from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, touches and frees a 96 MiB array (an SVHN im2col buffer's size) twice and prints
# the page faults of the second time; imports tinypact first unless told not to.
PROBE = """
import resource, sys
if sys.argv[1] == "tinypact":
    import tinypact
import numpy as np

def faults_of_one_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = np.empty(24 << 20, dtype=np.float32)
    buffer.fill(1.0)
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_one_buffer()
print(faults_of_one_buffer())
"""


def _second_buffer_faults(mode: str, **env) -> int:
    run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory applies to glibc only")
def test_freed_memory_is_reused_without_page_faults():
    # 96 MiB in 4 KiB pages is 24,576 faults; with transparent huge pages, 48 or more
    assert _second_buffer_faults("tinypact") < 16
    assert _second_buffer_faults("numpy only") >= 48
    assert _second_buffer_faults("tinypact", TINYPACT_KEEP_FREED_MEMORY="0") >= 48


def test_keep_freed_memory_reports_whether_it_applied(monkeypatch):
    from tinypact import runtime

    assert runtime.keep_freed_memory() is GLIBC
    monkeypatch.setenv("TINYPACT_KEEP_FREED_MEMORY", "0")
    assert runtime.keep_freed_memory() is False


def test_thread_waits_are_defaults_the_user_overrides(monkeypatch):
    from tinypact import runtime

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "7")
    runtime.set_thread_waits()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "7"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_conv_block_threads_work_in_a_forked_child():
    """A child forked after conv2d ran on block threads must not wait for threads it lacks."""
    code = """
import os, sys
import numpy as np
from tinypact import Tensor, functional as F
from tinypact.functional import conv
conv.BLOCK_BYTES = 1  # one image per block: conv2d goes through the block threads
x, w = Tensor(np.ones((4, 3, 8, 8), np.float32)), Tensor(np.ones((2, 3, 3, 3), np.float32))
before = F.conv2d(x, w).data
pid = os.fork()
if pid == 0:
    os._exit(0 if np.array_equal(F.conv2d(x, w).data, before) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


# Imports `first` (numpy, or torch, which imports NumPy: OpenBLAS is then loaded before tinypact
# sets OPENBLAS_THREAD_TIMEOUT), then tinypact unless told not to; prints the timeout NumPy's
# OpenBLAS holds and the CPU milliseconds the process spends in the 200 ms after a 2-thread
# matmul (an idle OpenBLAS thread that spins would spend them; one that sleeps spends ~0).
IMPORT_ORDER_PROBE = """
import ctypes, importlib, sys, time
importlib.import_module(sys.argv[1])
if sys.argv[2] == "tinypact":
    import tinypact
import numpy as np

path = sorted(line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower())[0]
library = ctypes.CDLL(path)  # NumPy's; found without tinypact, which the control must not import
library.openblas_thread_timeout.restype = ctypes.c_int
a = np.ones((800, 800), np.float32)
a @ a
start = time.process_time()
time.sleep(0.2)
print(library.openblas_thread_timeout(), round(1e3 * (time.process_time() - start)))
"""


def _import_order_probe(first: str, then: str) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env["OPENBLAS_NUM_THREADS"] = "2"
    done = subprocess.run([sys.executable, "-c", IMPORT_ORDER_PROBE, first, then],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    timeout, cpu_ms = done.stdout.split()
    return int(timeout), int(cpu_ms)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="finds OpenBLAS in /proc")
@pytest.mark.parametrize("first", ["numpy", "torch"])
def test_openblas_threads_wait_briefly_whatever_was_imported_first(first):
    """NumPy (or PyTorch, which loads NumPy) imported before tinypact: OpenBLAS read its thread
    timeout without tinypact's value; tinypact applies it on import, so an idle OpenBLAS thread
    sleeps instead of spinning for 0.1 s after each call. Without tinypact the probe sees the
    late setting (OpenBLAS's default, 0), so it can tell the two apart."""
    if first == "torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed (the numpy case covers the same loading order)")
    timeout, cpu_ms = _import_order_probe(first, "tinypact")
    assert timeout == 4
    assert cpu_ms < 100  # a spinning thread would take most of the 200 ms (one core or more)
    assert _import_order_probe(first, "nothing")[0] == 0


# Loads an OpenMP runtime before tinypact (as PyTorch does: its libgomp, globally), then runs a
# parallel Numba kernel and prints the threading layer Numba chose.
OPENMP_FIRST_PROBE = """
import ctypes, importlib, sys
if sys.argv[1] == "libgomp":
    ctypes.CDLL("libgomp.so.1", mode=ctypes.RTLD_GLOBAL)
elif sys.argv[1] != "nothing":
    importlib.import_module(sys.argv[1])
import numba
import numpy as np
from tinypact import _kernels
x = np.ones(1 << 17, np.float32)
_kernels.relu_forward.parallel(x, np.empty_like(x))
print(numba.threading_layer())
"""


def _layer_after(first: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER")}
    done = subprocess.run([sys.executable, "-c", OPENMP_FIRST_PROBE, first], capture_output=True,
                          text=True, env={**clean, "NUMBA_NUM_THREADS": "2", **env}, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def _libgomp_loads() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libgomp.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="finds OpenMP in /proc")
@pytest.mark.parametrize("first", ["libgomp", "torch"])
def test_numba_avoids_an_openmp_runtime_loaded_before_tinypact(first):
    """An OpenMP runtime loaded before tinypact (PyTorch's, or libgomp itself) read its wait
    policy before tinypact set it passive; Numba then runs on its own thread pool (workqueue)
    rather than on that runtime. Without one loaded first Numba keeps its default (OpenMP
    here), and a user's OMP_WAIT_POLICY or NUMBA_THREADING_LAYER is left as chosen."""
    if first == "torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed (the libgomp case covers the same loading order)")
    if not _libgomp_loads():
        pytest.skip("no libgomp on this system: Numba has no OpenMP layer to avoid")
    assert _layer_after(first) == "workqueue"
    assert _layer_after("nothing") == "omp"
    assert _layer_after(first, OMP_WAIT_POLICY="PASSIVE") == "omp"
    assert _layer_after(first, NUMBA_THREADING_LAYER="omp") == "omp"
