"""Replay every failure case of the hardening issue (#12) and fuzz both file formats.

    python tests/replay_hardening.py                      # the full replay: 200 byte flips and
                                                          # 150 member edits of each file
    python tests/replay_hardening.py --flips 20 --edits 15   # what the test suite runs

Every case runs a command-line entry point (`tinypact.train`, `tinypact.evaluate`,
`integer_engine`) in this process, as `python -m ...` would, on a tiny run trained first, and
classifies what happened:

- traceback: an exception escaped the command (what a user would see as a Python traceback);
- silent: the command succeeded (exit 0) on bad input, or loaded a damaged file whose content
  differs from the original;
- lost: a file that existed before a refused command was changed or removed;
- unclear: the command refused, but not with one line `error: ...` saying what was expected.

The fuzz damages a trained checkpoint and its `.tpq` in two ways: byte flips anywhere in the
file, and one-byte edits inside a zip member rewritten with a valid CRC (a buggy writer or a hand
edit: what the zip checksums cannot catch), half of them in the member's `.npy` header. A damaged
file that loads must load exactly the original content (a flip in a zip timestamp is harmless).
Exit status 0 when every count but "ok" is zero. Needs no network: downloads go to a closed port.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import traceback
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

TINY = ["--limit-train", "48", "--val-size", "24", "--limit-test", "40", "--batch-size", "16"]
DEAD_URL = "http://127.0.0.1:9/"  # the discard port: connection refused, never the internet
PROBLEMS = ("traceback", "silent", "lost", "unclear")


# ------------------------------------------------------------------------------ damaging files
def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def rezip_with_edit(src: Path, dst: Path, member: str, offset: int, value: int) -> None:
    """Copy the zip `src` to `dst` with byte `offset` of `member` set to `value`, CRCs valid."""
    members = zip_members(src)
    data = bytearray(members[member])
    data[offset] = value
    members[member] = bytes(data)
    write_zip(dst, members)


def npy_header_end(data: bytes) -> int:
    """Where a `.npy` member's data starts (after magic, version, header length and header)."""
    size = 2 if data[6] == 1 else 4
    return 8 + size + int.from_bytes(data[8:8 + size], "little")


def flip_byte(src: Path, dst: Path, rng: random.Random) -> str:
    raw = bytearray(src.read_bytes())
    offset = rng.randrange(len(raw))
    raw[offset] ^= rng.randrange(1, 256)
    dst.write_bytes(bytes(raw))
    return f"byte {offset} flipped"


def edit_member(src: Path, dst: Path, rng: random.Random) -> str:
    """One byte of one member changed, CRC recomputed; half of the edits hit the npy header."""
    members = zip_members(src)
    name = rng.choice(sorted(members))
    data = members[name]
    end = npy_header_end(data)
    offset = rng.randrange(end) if rng.random() < 0.5 or end >= len(data) else \
        rng.randrange(end, len(data))
    printable = b" (){}[]',:<>|0123456789abcdefiuUFTrue\n"
    value = rng.choice([b for b in printable if b != data[offset]] or [data[offset] ^ 1])
    rezip_with_edit(src, dst, name, offset, value)
    return f"{name} byte {offset}: {data[offset]!r} -> {value!r}"


def same_npz_content(a: Path, b: Path) -> bool:
    """True if two npz files hold the same arrays bit for bit (False if `b` cannot be read)."""
    try:
        with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
            if sorted(x.files) != sorted(y.files):
                return False
            return all(x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
                       and x[k].tobytes() == y[k].tobytes() for k in x.files)
    except Exception:  # noqa: BLE001 - unreadable means "not the same"
        return False


# ------------------------------------------------------------------------------ running commands
@dataclass
class Result:
    code: int | None
    out: str
    err: str
    error: str | None = None  # a traceback that escaped the command


def run(main: Callable, argv: list[str]) -> Result:
    """Call a CLI's main(argv) here, capturing stdout/stderr, exit code and escaped exceptions."""
    out, err = io.StringIO(), io.StringIO()
    code, error = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # noqa: BLE001 - this is what we count
            error = traceback.format_exc()
    return Result(code, out.getvalue(), err.getvalue(), error)


def one_line_error(text: str) -> bool:
    return text.startswith("error: ") and text.count("\n") == 1


def snapshot(paths: list[Path]) -> dict[Path, bytes | None]:
    files = {}
    for path in paths:
        for f in ([p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]):
            files[f] = f.read_bytes() if f.is_file() else None
    return files


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    verbose: bool = False

    def record(self, kind: str, case: str, detail: str = "") -> None:
        self.counts[kind] += 1
        if kind != "ok":
            self.failures.append(f"{kind:9} {case}: {detail.strip()[-600:]}")
        if self.verbose:
            print(f"{kind:9} {case}")

    def refused(self, case: str, main: Callable, argv: list[str], expect: tuple[str, ...] = (),
                keep: list[Path] = (), harmless: Callable[[], bool] | None = None) -> Result:
        """Run a command that must refuse (one line, exit != 0, files in `keep` untouched).

        `harmless()` True means the input turned out to be intact, so success is right.
        """
        before = snapshot(list(keep))
        result = run(main, argv)
        if result.error:
            self.record("traceback", case, result.error)
        elif result.code == 0:
            kind = "ok" if harmless is not None and harmless() else "silent"
            self.record(kind, case, result.out[-300:])
        elif not one_line_error(result.err) or not all(e in result.err for e in expect):
            self.record("unclear", case, f"exit {result.code}: {result.err!r} (expected {expect})")
        elif snapshot(list(keep)) != before:
            self.record("lost", case, "files changed by a refused command")
        else:
            self.record("ok", case)
        return result

    def check(self, case: str, ok: bool, detail: str = "") -> None:
        self.record("ok" if ok else "silent", case, detail)


@contextlib.contextmanager
def patched(obj, **values):
    old = {name: getattr(obj, name) for name in values}
    for name, value in values.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(obj, name, value)


# ------------------------------------------------------------------------------------- the cases
def train_tiny_run(tally: Tally, work: Path) -> Path:
    """One epoch on the bundled sample with export, umask 022, progress bars on: the run the
    other cases damage. Checks the files' modes and that no bar reached redirected stderr."""
    from tinypact.train import main as train

    run_dir = work / "run"
    old = os.umask(0o022)
    try:
        result = run(train, ["--epochs", "1", *TINY, "--out", str(run_dir)])
    finally:
        os.umask(old)
    if result.error or result.code != 0:
        raise SystemExit(f"the tiny training run failed:\n{result.error or result.err}")
    tally.check("progress bars stay off a redirected stderr", "\r" not in result.err, result.err)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run_dir.iterdir()}
    tally.check("run files honour the umask (0644 like the PNGs)",
                set(modes.values()) == {0o644}, str({k: oct(v) for k, v in modes.items()}))
    return run_dir


def cli_cases(tally: Tally, work: Path, run_dir: Path) -> None:
    from integer_engine.cli import main as engine
    from tinypact.evaluate import main as evaluate
    from tinypact.train import main as train

    checkpoint, model = run_dir / "checkpoint.npz", run_dir / "model.tpq"
    (work / "a-file").write_text("")
    tally.refused("train --out under a file", train, ["--out", str(work / "a-file" / "run")],
                  ("is a file",))
    tally.refused("train --out on a read-only file system", train, ["--out", "/proc/run"],
                  ("cannot write to /proc",))
    tally.refused("export -o EXISTING_DIR", engine, ["export", str(run_dir), "-o", str(work)],
                  ("is a directory",))
    tally.refused("export -o on a read-only file system", engine,
                  ["export", str(run_dir), "-o", "/proc/x.tpq"], ("cannot write to /proc",))
    permission_cases(tally, work, run_dir)
    tally.refused("export of a .tpq", engine, ["export", str(model), "-o", str(work / "y.tpq")],
                  ("already exported",), keep=[model])
    for command in (["inspect"], ["run", "--data", "sample"]):
        result = run(engine, [command[0], str(run_dir), *command[1:]])
        tally.check(f"{command[0]} RUN_DIR reads RUN_DIR/model.tpq",
                    result.code == 0 and not result.error, result.error or result.err)
    if importlib.util.find_spec("onnx") is not None:  # the onnx extra
        onnx_cases(tally, work, run_dir)
    tally.refused("simulate --out naming a file, checked first", engine,
                  ["simulate", str(model), "--out", str(work / "a-file")], ("is a file",))
    tally.refused("train --data-dir naming a file", train,
                  ["--data-dir", str(work / "a-file"), "--out", str(work / "dd")], ("is a file",))
    tally.refused("train --batch-size 0 names the option", train,
                  ["--batch-size", "0"], ("--batch-size must be at least 1",))
    tally.refused("train --lr 0 names the option", train, ["--lr", "0"], ("--lr must be positive",))
    in_use = copy_run(run_dir, work / "in-use")
    from tinypact.checkpoint import run_dir_lock
    with run_dir_lock(in_use):
        for extra in (["--resume"], []):
            tally.refused(f"train {' '.join(extra) or 'fresh'} into a run directory in use", train,
                          ["--epochs", "1", *TINY, "--out", str(in_use), *extra], ("in use",),
                          keep=[in_use])

    bad = work / "bad-header.npz"
    rezip_with_edit(checkpoint, bad, "meta.npy", 20, ord("("))  # NumPy: tokenize.TokenError
    tally.refused("evaluate: malformed npy header, valid CRC", evaluate, [str(bad)], (str(bad),))
    tally.refused("export: malformed npy header, valid CRC", engine,
                  ["export", str(bad), "-o", str(work / "x.tpq")], (str(bad),))
    resumed = copy_run(run_dir, work / "bad-header-run")
    shutil.copy(bad, resumed / "checkpoint.npz")
    tally.refused("train --resume: malformed npy header, valid CRC", train,
                  ["--epochs", "1", *TINY, "--out", str(resumed), "--resume"], ("checkpoint",),
                  keep=[resumed])
    bad_tpq = work / "bad-header.tpq"
    rezip_with_edit(model, bad_tpq, "header.npy", 20, ord("("))
    tally.refused(".tpq loader: malformed npy header, valid CRC", engine,
                  ["inspect", str(bad_tpq)], (str(bad_tpq),))

    no_checkpoint = copy_run(run_dir, work / "no-checkpoint")
    (no_checkpoint / "checkpoint.npz").unlink()
    tally.refused("train --resume with config.json but no checkpoint", train,
                  ["--epochs", "1", *TINY, "--out", str(no_checkpoint), "--resume"],
                  ("no checkpoint.npz to resume from", "delete"), keep=[no_checkpoint])

    orphans = copy_run(run_dir, work / "orphans")
    for name in (".checkpoint-k9.npz.tmp", ".metrics-k9.tmp", ".config.json-k9.tmp"):
        (orphans / name).write_bytes(b"half")
    result = run(train, ["--epochs", "1", *TINY, "--no-export", "--out", str(orphans),
                         "--resume"])
    tally.check("train --resume removes orphaned temporary files",
                result.code == 0 and not list(orphans.glob(".*")), result.error or result.err)

    nan_run = copy_run(run_dir, work / "nan")
    poison_checkpoint(nan_run / "checkpoint.npz")
    tally.refused("evaluate a checkpoint with NaN weights", evaluate, [str(nan_run)], ("NaN",))
    tally.refused("train --resume a checkpoint with NaN weights", train,
                  ["--epochs", "1", *TINY, "--out", str(nan_run), "--resume"], ("NaN",),
                  keep=[nan_run])
    tally.refused("training that diverges (float network, Adam lr 1e30)", train,
                  ["--epochs", "1", *TINY, "--bits", "32", "--lr", "1e30",
                   "--out", str(work / "diverged")],
                  ("diverged", "smaller --lr"))
    tally.refused("--val-size 100000 on 5000 images", train,
                  ["--val-size", "100000", "--out", str(work / "val")], ("use at most 2500",))
    for bits in ("33", "12", "0"):
        tally.refused(f"--bits {bits}", train, ["--bits", bits], ("must be one of 1..8, 16 or 32",))


# Root without the two capabilities that let it ignore permission bits: a mode-555 folder then
# refuses it as it refuses any user, while it still reads the venv as its owner (`nobody` cannot
# where the clone sits in /root or a `mktemp -d` folder, mode 700).
WITHOUT_DAC_OVERRIDE = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                        "--bounding-set=-dac_override,-dac_read_search"]


def permission_cases(tally: Tally, work: Path, run_dir: Path) -> None:
    """A directory the user may not write to (mode 555), commands in a fresh interpreter: as
    root without CAP_DAC_OVERRIDE (setpriv), else as the user running the replay."""
    readonly = work / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    numba_cache = work / "numba-cache"
    numba_cache.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)}
    prefix = [sys.executable, "-m"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            print("note: read-only directory cases not run (root, and no setpriv to drop "
                  "CAP_DAC_OVERRIDE with)")
            return
        prefix = WITHOUT_DAC_OVERRIDE + prefix
        probe = subprocess.run(prefix[:-1] + ["-c", "import tinypact, integer_engine; open("
                                              f"{str(readonly / 'probe')!r}, 'w')"],
                               capture_output=True, text=True, env=env, timeout=120)
        if "PermissionError" not in probe.stderr:  # no setpriv, or capabilities it cannot drop
            print(f"note: read-only directory cases not run (root without CAP_DAC_OVERRIDE "
                  f"could not be had: {(probe.stderr.strip().splitlines() or ['?'])[-1]})")
            return
    for case, argv in (("train --out in a read-only directory",
                        ["tinypact.train", "--out", str(readonly / "run")]),
                       ("export -o into a read-only directory",
                        ["integer_engine", "export", str(run_dir), "-o", str(readonly / "x.tpq")])):
        proc = subprocess.run(prefix + argv, capture_output=True, text=True, env=env, timeout=300)
        if "Traceback" in proc.stderr:
            tally.record("traceback", case, proc.stderr)
        elif proc.returncode == 0:
            tally.record("silent", case, proc.stdout)
        elif not one_line_error(proc.stderr) or "Permission denied" not in proc.stderr:
            tally.record("unclear", case, proc.stderr)
        else:
            tally.record("ok", case)


def onnx_cases(tally: Tally, work: Path, run_dir: Path) -> None:
    """export-onnx, import and verify-onnx (the onnx extra)."""
    from integer_engine.cli import main as engine
    from integer_engine.format import load_model, save_model

    model = run_dir / "model.tpq"
    for extra in ([], ["--qonnx"]):
        tally.refused(f"export-onnx {' '.join(extra)} -o EXISTING_DIR", engine,
                      ["export-onnx", str(model), *extra, "-o", str(work)], ("is a directory",))
    tally.refused("import -o EXISTING_DIR", engine,
                  ["import", str(Path(__file__).parent / "fixtures" / "cnv_w4a4.onnx"), "-o",
                   str(work)], ("is a directory",))
    result = run(engine, ["export-onnx", str(run_dir), "-o", str(work / "m.onnx")])
    tally.check("export-onnx RUN_DIR reads RUN_DIR/model.tpq", result.code == 0 and not result.error,
                result.error or result.err)
    other = load_model(model)  # another model: one weight code changed
    weight = other.compute_layers[0].arrays["weight"]
    weight.flat[0] = 1 if weight.flat[0] == 0 else weight.flat[0] - 1
    save_model(other, work / "other.tpq")
    tally.refused("verify-onnx with an ONNX file of another model", engine,
                  ["verify-onnx", str(work / "other.tpq"), str(work / "m.onnx"), "--random", "2"],
                  ("exported from another model",))


def copy_run(run_dir: Path, dst: Path) -> Path:
    shutil.copytree(run_dir, dst)
    return dst


def poison_checkpoint(path: Path) -> None:
    """Rewrite a checkpoint (valid checksums) with one NaN weight: what a diverged run saves."""
    from tinypact.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    state = {k: np.array(v) for k, v in ckpt.model_state.items()}
    first = next(k for k, v in state.items() if v.dtype.kind == "f")
    state[first].flat[0] = np.nan
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "version", "arrays")}
    save_checkpoint(path, meta, state, ckpt.optimizer_state, ckpt.scheduler_state, ckpt.rng_state)


def data_cases(tally: Tally, work: Path) -> None:
    """Local data sets without internet: MD5 mismatches, missing files, the extracted CIFAR-10
    folder, and no empty cache folders after a failed download."""
    from tinypact.data import datasets as ds
    from tinypact.train import main as train

    with patched(ds, SVHN_URL=DEAD_URL, CIFAR10_URL=DEAD_URL + "cifar-10-python.tar.gz"):
        empty = work / "no-data"
        tally.refused("svhn offline: every missing file listed", train,
                      ["svhn", "--data-dir", str(empty), "--out", str(work / "r1")],
                      ("train_32x32.mat", "test_32x32.mat is missing"))
        tally.check("a failed download leaves no empty cache folder", not empty.exists())
        from integer_engine.cli import main as engine

        model = work / "run" / "model.tpq"
        result = tally.refused("integer_engine run --data svhn offline: only the test file",
                               engine, ["run", str(model), "--data", "svhn", "--data-dir",
                                        str(empty)], ("test_32x32.mat",))
        tally.check("run --data svhn offline does not ask for the training file",
                    "train_32x32.mat" not in result.err, result.err)

        wrong = work / "wrong-md5"
        (wrong / "svhn").mkdir(parents=True)
        (wrong / "svhn" / "train_32x32.mat").write_bytes(b"not the official file")
        tally.refused("svhn file with the wrong MD5", train,
                      ["svhn", "--data-dir", str(wrong), "--out", str(work / "r2")],
                      ("has MD5", "expected e26dedcc434d2e4c54c9b2d4a06d8373", "--no-checksum",
                       "test_32x32.mat is missing"), keep=[wrong])
        (wrong / "cifar10").mkdir()
        (wrong / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"not the official file")
        tally.refused("cifar10 archive with the wrong MD5", train,
                      ["cifar10", "--data-dir", str(wrong), "--out", str(work / "r3")],
                      ("has MD5", "expected c58f30108f718f92721af3b95e74349a", "--no-checksum"),
                      keep=[wrong])
        tally.refused("cifar10 archive with the wrong MD5 and --no-checksum: not an archive", train,
                      ["cifar10", "--data-dir", str(wrong), "--no-checksum",
                       "--out", str(work / "r4")], ("not the CIFAR-10 python archive",),
                      keep=[wrong])
        folder = work / "extracted" / "cifar10" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        (folder / "data_batch_1").write_bytes(b"half a batch")
        tally.refused("cifar10 extracted folder with missing and bad files", train,
                      ["cifar10", "--data-dir", str(work / "extracted"),
                       "--out", str(work / "r5")],
                      ("data_batch_1 has MD5", "data_batch_5 is missing", "test_batch is missing"),
                      keep=[folder])


def help_cases(tally: Tally) -> None:
    from integer_engine.cli import build_parser as engine_parser
    from tinypact.train import build_parser as train_parser

    text = " ".join(train_parser().format_help().split())
    for flag, expected in (("--epochs", "(default: sample 8,"), ("--batch-size", "(default: sample 64,"),
                           ("--seed", "(default 0)"), ("--data-dir", "$TINYPACT_DATA"),
                           ("--data-dir", "~/.cache/tinypact"), ("--no-checksum", "skips")):
        tally.check(f"train --help: {flag} says {expected}", expected in text)
    commands = engine_parser()._subparsers._group_actions[0].choices
    tally.check("integer_engine inspect has a description",
                bool(commands["inspect"].description))
    tally.check("simulate --help gives the --out default",
                "default: accelerator_out" in " ".join(commands["simulate"].format_help().split()))


# -------------------------------------------------------------------------------------- the fuzz
def fuzz(tally: Tally, work: Path, run_dir: Path, flips: int, edits: int, seed: int) -> None:
    """Damage the checkpoint and the .tpq; every loader must refuse in one line or load the
    original content exactly; a refused resume must leave the run directory as it was."""
    from integer_engine.cli import main as engine
    from tinypact.evaluate import main as evaluate
    from tinypact.train import main as train

    rng = random.Random(seed)
    checkpoint, model = run_dir / "checkpoint.npz", run_dir / "model.tpq"
    resume_dir = copy_run(run_dir, work / "fuzz-resume")
    for damage, count in ((flip_byte, flips), (edit_member, edits)):
        for i in range(count):
            bad = work / "fuzz.npz"
            what = damage(checkpoint, bad, rng)
            intact = lambda: same_npz_content(checkpoint, bad)  # noqa: E731
            case = f"checkpoint {damage.__name__} #{i} ({what})"
            tally.refused(f"evaluate {case}", evaluate, [str(bad), "--limit", "8"],
                          harmless=intact)
            tally.refused(f"export {case}", engine, ["export", str(bad), "-o",
                                                     str(work / "fuzz.tpq")], harmless=intact)
            shutil.copy(bad, resume_dir / "checkpoint.npz")
            tally.refused(f"train --resume {case}", train,
                          ["--epochs", "1", *TINY, "--no-export", "--out", str(resume_dir),
                           "--resume"], keep=[resume_dir], harmless=intact)
            shutil.copy(checkpoint, resume_dir / "checkpoint.npz")

            bad_tpq = work / "fuzz-model.tpq"
            what = damage(model, bad_tpq, rng)
            tally.refused(f"inspect .tpq {damage.__name__} #{i} ({what})", engine,
                          ["inspect", str(bad_tpq)],
                          harmless=lambda: same_npz_content(model, bad_tpq))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=200, help="byte flips per file (default 200)")
    parser.add_argument("--edits", type=int, default=150,
                        help="CRC-consistent member edits per file (default 150)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every case")
    args = parser.parse_args(argv)
    tally = Tally(verbose=args.verbose)
    with tempfile.TemporaryDirectory(prefix="tinypact-replay-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        run_dir = train_tiny_run(tally, work)
        cli_cases(tally, work, run_dir)
        data_cases(tally, work)
        help_cases(tally)
        fuzz(tally, work, run_dir, args.flips, args.edits, args.seed)
    for line in tally.failures:
        print(line)
    counts = ", ".join(f"{tally.counts[kind]} {kind}" for kind in ("ok",) + PROBLEMS)
    print(f"replayed {sum(tally.counts.values())} cases: {counts}")
    return 1 if any(tally.counts[kind] for kind in PROBLEMS) else 0


if __name__ == "__main__":
    sys.exit(main())
