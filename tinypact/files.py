"""Writing files safely: atomically (temp file + os.replace) and with the umask's permissions.

Every file tinypact writes into a run directory or the data cache goes through a temporary file
beside its destination, so a reader (or a crash) never sees half a file; and gets the mode a plain
`open` would give it (0666 less the umask), not the 0600 of `tempfile.mkstemp`.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def new_file_mode() -> int:
    """0666 less the process umask: the mode `open` gives a new file (mkstemp gives 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: str | os.PathLike, prefix: str, suffix: str, mode: str = "wb",
                 fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on success move it over `path`.

    The file gets mode 0666 less the umask, as `open` would give it (mkstemp's is 0600). On any
    failure (disk full, Ctrl-C) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
