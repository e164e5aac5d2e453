"""tinypact/runtime.py: the process settings tinypact makes on import (thread waits, freed memory)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

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
