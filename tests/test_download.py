"""Downloads from a local HTTP server on 127.0.0.1 (never the internet): good file, wrong
checksum, truncated transfer, partial file in the cache, mirrors, offline, and each loader
fetching its files in the official formats."""
from __future__ import annotations

import collections
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
from test_data import cifar_tar, fashion_files, idx_bytes, svhn_mat

from tinypact.data import DataError, ensure_file, load_dataset, resolve_data_dir
from tinypact.data import datasets as ds


class LocalServer:
    """A threaded HTTP server on a random port serving in-memory files.

    `serve(name, body, declared=n)` announces Content-Length n but sends `body` and closes the
    connection: a transfer cut off midway.
    """

    def __init__(self):
        self.routes: dict[str, tuple[bytes, int | None]] = {}
        self.hits: collections.Counter = collections.Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                name = self.path.lstrip("/")
                server.hits[name] += 1
                if name not in server.routes:
                    self.send_error(404)
                    return
                body, declared = server.routes[name]
                self.send_response(200)
                self.send_header("Content-Length", str(declared or len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def serve(self, name: str, body: bytes, declared: int | None = None) -> str:
        self.routes[name] = (body, declared)
        return self.url(name)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("TINYPACT_DATA", raising=False)
    return tmp_path / "cache"


BODY = bytes(range(256)) * 4000  # 1,024,000 bytes: several 1 MiB-chunk reads are not needed
MD5 = hashlib.md5(BODY).hexdigest()


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()) \
        if directory.exists() else []


def test_good_download_is_cached(server, cache, capsys):
    url = server.serve("f.bin", BODY)
    path = ensure_file("f.bin", [url], MD5, cache, subdir="sub", progress=True)
    assert path == cache / "sub" / "f.bin" and path.read_bytes() == BODY
    assert "f.bin" in capsys.readouterr().err, "a progress bar names the file"
    assert files_in(cache) == ["sub/f.bin"], "no temporary file may remain"
    assert ensure_file("f.bin", [url], MD5, cache, subdir="sub") == path
    assert server.hits["f.bin"] == 1, "a verified cached file is not downloaded again"


def test_wrong_checksum_leaves_nothing(server, cache):
    url = server.serve("f.bin", BODY[:-1] + b"x")
    with pytest.raises(DataError) as info:
        ensure_file("f.bin", [url], MD5, cache)
    msg = str(info.value)
    assert f"expected {MD5}" in msg and url in msg and "\n" not in msg, msg
    assert files_in(cache) == []


def test_truncated_transfer_is_detected_then_retried(server, cache):
    url = server.serve("f.bin", BODY[: len(BODY) // 3], declared=len(BODY))
    with pytest.raises(DataError, match="truncated") as info:
        ensure_file("f.bin", [url], MD5, cache)
    assert "\n" not in str(info.value)
    assert files_in(cache) == []
    server.serve("f.bin", BODY)
    assert ensure_file("f.bin", [url], MD5, cache).read_bytes() == BODY


def test_partial_file_in_cache_is_downloaded_again(server, cache):
    url = server.serve("f.bin", BODY)
    (cache).mkdir(parents=True)
    (cache / "f.bin").write_bytes(BODY[:1000])  # e.g. an interrupted copy made by hand
    assert ensure_file("f.bin", [url], MD5, cache).read_bytes() == BODY
    assert server.hits["f.bin"] == 1


def test_mirrors_are_tried_in_order(server, cache):
    good = server.serve("good/f.bin", BODY)
    bad = server.serve("bad/f.bin", b"wrong")
    path = ensure_file("f.bin", [server.url("missing/f.bin"), bad, good], MD5, cache)
    assert path.read_bytes() == BODY
    assert [server.hits[n] for n in ("missing/f.bin", "bad/f.bin", "good/f.bin")] == [1, 1, 1]


def test_offline_one_line_names_url_and_destination(cache):
    dead = LocalServer()
    url = dead.url("f.bin")
    dead.stop()  # nothing listens on that port any more: connection refused
    with pytest.raises(DataError) as info:
        ensure_file("f.bin", [url], MD5, cache, subdir="sub", timeout=5)
    msg = str(info.value)
    assert url in msg and str(cache / "sub" / "f.bin") in msg and "by hand" in msg, msg
    assert "\n" not in msg
    assert not cache.exists(), "a failed download left the folders it created"


def test_mismatching_local_file_names_both_md5s_and_no_checksum_uses_it(cache):
    dead = LocalServer()
    url = dead.url("f.bin")
    dead.stop()
    dest = cache / "sub" / "f.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"a local copy that is not the official file")
    actual = hashlib.md5(dest.read_bytes()).hexdigest()
    for download in (True, False):
        with pytest.raises(DataError) as info:
            ensure_file("f.bin", [url], MD5, cache, subdir="sub", timeout=5, download=download)
        msg = str(info.value)
        assert f"has MD5 {actual}, expected {MD5}" in msg and "--no-checksum" in msg, msg
        assert "\n" not in msg and str(dest) in msg, msg
    assert ensure_file("f.bin", [url], MD5, cache, subdir="sub", verify=False) == dest
    assert dest.read_bytes() == b"a local copy that is not the official file"


def test_downloads_off(cache):
    with pytest.raises(DataError) as info:
        ensure_file("f.bin", ["http://127.0.0.1:9/f.bin"], MD5, cache, download=False)
    assert "http://127.0.0.1:9/f.bin" in str(info.value) and str(cache / "f.bin") in str(info.value)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("TINYPACT_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "tinypact"
    monkeypatch.setenv("TINYPACT_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg", "--data-dir wins"


# --------------------------------------------------------------------------- loaders over HTTP

def test_fashion_mnist_downloads_from_official_layout(server, cache, monkeypatch):
    files = fashion_files(n_train=12, n_test=8)
    gz = {stem: gzip.compress(idx_bytes(a), mtime=0) for stem, a in files.items()}
    monkeypatch.setattr(ds, "FASHION_MNIST_FILES", {
        stem: (hashlib.md5(gz[stem]).hexdigest(), hashlib.md5(idx_bytes(a)).hexdigest())
        for stem, a in files.items()})
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", cache / "no-debian")
    for stem in files:  # only the second mirror has the files
        server.serve(f"mirror2/{stem}.gz", gz[stem])
    monkeypatch.setattr(ds, "FASHION_MNIST_URLS", (server.url("mirror1/"), server.url("mirror2/")))
    monkeypatch.setenv("TINYPACT_DATA", str(cache))
    d = load_dataset("fashion-mnist", "test")
    np.testing.assert_array_equal(d.images[:, 0], files["t10k-images-idx3-ubyte"])
    assert files_in(cache) == ["fashion-mnist/t10k-images-idx3-ubyte.gz",
                               "fashion-mnist/t10k-labels-idx1-ubyte.gz"]


def test_cifar10_and_svhn_download(server, cache, monkeypatch, tmp_path):
    blob, arrays = cifar_tar(per_batch=3)
    monkeypatch.setattr(ds, "CIFAR10_URL", server.serve("cifar-10-python.tar.gz", blob))
    monkeypatch.setattr(ds, "CIFAR10_MD5", hashlib.md5(blob).hexdigest())
    d = load_dataset("cifar10", "test", data_dir=cache)
    np.testing.assert_array_equal(d.images, arrays["test_batch"][0])

    mat = tmp_path / "test_32x32.mat"
    x, _ = svhn_mat(mat, n=5)
    server.serve("svhn/test_32x32.mat", mat.read_bytes())
    monkeypatch.setattr(ds, "SVHN_URL", server.url("svhn/"))
    monkeypatch.setitem(ds.SVHN_FILES, "test", ("test_32x32.mat", hashlib.md5(mat.read_bytes()).hexdigest()))
    d = load_dataset("svhn", "test", data_dir=cache)
    assert d.images.shape == (5, 3, 40, 40)
    assert files_in(cache) == ["cifar10/cifar-10-python.tar.gz", "svhn/test_32x32.mat"]


def test_svhn_train_plus_extra_downloads_both_files(server, cache, monkeypatch, tmp_path):
    """`--svhn-extra` (TrainConfig.svhn_extra): training draws from train followed by extra,
    both fetched in the official .mat format and checked against their md5."""
    from tinypact import trainer
    from tinypact.recipes import recipe

    monkeypatch.setattr(ds, "SVHN_URL", server.url("svhn/"))
    arrays = {}
    for split, n, seed in (("train", 4, 1), ("extra", 7, 2), ("test", 3, 3)):
        mat = tmp_path / ds.SVHN_FILES[split][0]
        arrays[split] = svhn_mat(mat, n=n, seed=seed)
        server.serve(f"svhn/{mat.name}", mat.read_bytes())
        monkeypatch.setitem(ds.SVHN_FILES, split,
                            (mat.name, hashlib.md5(mat.read_bytes()).hexdigest()))

    both = ds.load_svhn("train+extra", data_dir=cache, size=None)
    x = np.concatenate([arrays["train"][0], arrays["extra"][0]], axis=3).transpose(3, 2, 0, 1)
    y = np.concatenate([arrays["train"][1], arrays["extra"][1]]).ravel().astype(np.int64) % 10
    np.testing.assert_array_equal(both.images, x)
    np.testing.assert_array_equal(both.labels, y)
    assert files_in(cache) == ["svhn/extra_32x32.mat", "svhn/train_32x32.mat"]

    train, val, test = trainer.load_splits(recipe("svhn", svhn_extra=True, val_size=3,
                                                  data_dir=str(cache)))
    assert (len(train), len(val), len(test)) == (4 + 7 - 3, 3, 3)
    assert train.images.shape[1:] == (3, 40, 40)
    train_only, _, _ = trainer.load_splits(recipe("svhn", val_size=2, data_dir=str(cache)))
    assert len(train_only) == 4 - 2, "without svhn_extra, extra is not used"


def test_loader_offline_message(cache, monkeypatch):
    dead = LocalServer()
    base = dead.url("svhn/")
    dead.stop()
    monkeypatch.setattr(ds, "SVHN_URL", base)
    with pytest.raises(DataError) as info:
        load_dataset("svhn", "train", data_dir=cache)
    msg = str(info.value)
    assert base + "train_32x32.mat" in msg and str(cache / "svhn" / "train_32x32.mat") in msg, msg
    assert "test_32x32.mat is missing" in msg and base + "test_32x32.mat" in msg, (
        f"the SVHN error must list every missing file at once: {msg}")
    assert not cache.exists(), "a failed download left empty cache folders"
    with pytest.raises(DataError) as info:  # the test split alone (evaluate, the engine's run)
        load_dataset("svhn", "test", data_dir=cache)
    msg = str(info.value)
    assert base + "test_32x32.mat" in msg and "train_32x32.mat" not in msg, (
        f"the test split must not ask for the training file: {msg}")
