"""Downloads into the data cache: official URL, progress bar, MD5 check, atomic writes.

Where data lives (first match wins):
1. the `data_dir` argument (the training CLI's `--data-dir`),
2. the `TINYPACT_DATA` environment variable,
3. `$XDG_CACHE_HOME/tinypact`, i.e. `~/.cache/tinypact` by default.

A file is fetched to a temporary file next to its destination and moved into place with
`os.replace` only after its MD5 matched, so the cache never holds a partial or corrupt file
written by us. A cached file whose MD5 does not match (a copy interrupted outside tinypact, a
truncated hand-made copy) is downloaded again from scratch; there is no resuming. To use a local
file that is not the official one as it is, pass `verify=False` (the CLIs' `--no-checksum`):
the MD5 check is then skipped. A failed download removes the folders it created.
Every failure raises `DataError` with one line saying what to do.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from tinypact.files import new_file_mode

ENV_VAR = "TINYPACT_DATA"
_CHUNK = 1 << 20


class DataError(Exception):
    """A data set is missing, corrupt or malformed; the message (one line) says what to do."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data cache directory: `data_dir` > `$TINYPACT_DATA` > `~/.cache/tinypact`; DataError
    if the one given names a file."""
    for given, what in ((data_dir, "--data-dir"), (os.environ.get(ENV_VAR), f"${ENV_VAR}")):
        if given is not None and str(given) != "":
            path = Path(given).expanduser()
            if path.exists() and not path.is_dir():
                raise DataError(f"{what} {given} is a file; give the folder that holds (or will "
                                f"hold) the data sets")
            return path
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache_home).expanduser() / "tinypact"


def md5_of(path: str | os.PathLike) -> str:
    """Hex MD5 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_problem(path: Path, md5: str | None) -> str | None:
    """None if `path` is a usable copy (exists and, if `md5` is given, matches it); else what is
    wrong with it, as a phrase: "is missing", "has MD5 ..., expected ...", "is not a file"."""
    if not path.exists():
        return "is missing"
    if not path.is_file():
        return "is not a file"
    if md5 is None:
        return None
    actual = md5_of(path)
    if actual == md5:
        return None
    return f"has MD5 {actual}, expected {md5} (a partial copy or not the official file)"


def _missing_folders(directory: Path) -> list[Path]:
    """`directory` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed download created, deepest first, if they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _fetch(url: str, dest: Path, md5: str | None, progress: bool | None, timeout: float) -> None:
    """Download `url` to `dest` atomically; raise DataError (bad data) or OSError (no network)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, new_file_mode())
        digest = hashlib.md5()
        received = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            # disable=None: a bar on a terminal, silence in logs and tests.
            bar_disabled = None if progress is None else not progress
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dest.name, disable=bar_disabled, leave=False) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except http.client.IncompleteRead as e:
                        received += len(e.partial)
                        chunk = b""
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if total is not None and received != total:
            raise DataError(f"{url} was truncated at {received} of {total} bytes")
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(f"{url} has md5 {digest.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_file(filename: str, urls: Sequence[str], md5: str | None,
                data_dir: str | os.PathLike | None = None, *, subdir: str = "",
                download: bool = True, progress: bool | None = None,
                timeout: float = 30.0, verify: bool = True) -> Path:
    """Path of a verified copy of `filename` in the cache, downloading it if needed.

    The file is `resolve_data_dir(data_dir) / subdir / filename`. A cached copy with the right
    MD5 (any copy, if not `verify`) is used as is; a missing or mismatching one is (re)downloaded
    from `urls` in order (mirrors). Raises DataError naming the first URL, the destination path
    and, for a mismatch, both MD5s, when no copy can be had (offline, `download=False`, every
    mirror bad).
    """
    dest = resolve_data_dir(data_dir) / subdir / filename
    problem = file_problem(dest, md5 if verify else None)
    if problem is None:
        return dest
    advice = f"download {urls[0]} (md5 {md5}) by hand and place it at {dest}"
    if problem.startswith("has MD5"):
        advice += ", or pass --no-checksum to use the file you have as it is"
    if not download:
        raise DataError(f"{dest} {problem} and downloads are off; {advice}")
    created = _missing_folders(dest.parent)
    problems = []
    for url in urls:
        try:
            _fetch(url, dest, md5, progress, timeout)
            return dest
        except DataError as e:
            problems.append(str(e))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            problems.append(f"cannot reach {url} ({reason})")
    _remove_empty(created)
    raise DataError(f"{dest} {problem} and could not be downloaded ({'; '.join(problems)}); "
                    f"nothing was kept: run again to retry, or {advice}")
