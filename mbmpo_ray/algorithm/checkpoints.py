"""Checkpoints that are never torn: written to a temporary directory, fsynced, renamed into
place, the last few kept (pure Python; no Ray).

Layout of a run directory::

    run_dir/checkpoints/iter_000007/    complete checkpoints (the last ``keep``), each with
    run_dir/checkpoints/iter_000008/    a manifest listing every file and its size
    run_dir/checkpoint -> checkpoints/iter_000008   (symlink to the newest, replaced atomically)

A save writes everything into ``checkpoints/.tmp_...``, adds the manifest, fsyncs every file
and directory and only then renames the directory to ``iter_NNNNNN`` (an atomic rename on one
filesystem). Older checkpoints are renamed to ``.trash_...`` before they are deleted. A process
killed at any moment therefore leaves every ``iter_*`` directory complete, and
:func:`latest_checkpoint` (which also checks each manifest) finds the newest one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINTS_DIR = "checkpoints"
LATEST_LINK = "checkpoint"
MANIFEST = "mbmpo_checkpoint.json"
_PREFIX = "iter_"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or not a checkpoint at all."""


def checkpoint_name(iteration: int) -> str:
    return f"{_PREFIX}{int(iteration):06d}"


def _iteration_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(_PREFIX):
        return None
    try:
        return int(name[len(_PREFIX):])
    except ValueError:
        return None


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _write_manifest(root: Path, iteration: int, extra: dict[str, Any] | None) -> None:
    files = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            files[str(p.relative_to(root))] = p.stat().st_size
    data = {"iteration": int(iteration), "files": files, **(extra or {})}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, root / MANIFEST)


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a checkpoint written by :func:`save_checkpoint` (None: none there)."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def check_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` as a resolved directory if it holds a complete checkpoint.

    A checkpoint with a manifest must have every listed file at its listed size; one without
    (written by Tune or ``save_to_path``) must at least hold RLlib's metadata and state files.

    Raises:
        CheckpointError: saying what is missing.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} is not a directory")
    p = p.resolve()
    manifest = read_manifest(p)
    if manifest is not None:
        for rel, size in manifest.get("files", {}).items():
            f = p / rel
            if not f.is_file():
                raise CheckpointError(f"checkpoint {p} is incomplete: {rel} is missing")
            if f.stat().st_size != size:
                raise CheckpointError(f"checkpoint {p} is incomplete: {rel} has "
                                      f"{f.stat().st_size} bytes, expected {size}")
        return p
    if not any(p.iterdir()):
        raise CheckpointError(f"checkpoint {p} is empty")
    if not (p / "rllib_checkpoint.json").is_file():
        raise CheckpointError(f"{p} is not an RLlib checkpoint (no rllib_checkpoint.json)")
    for f in p.glob("*.pkl"):
        if f.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {p} is incomplete: {f.name} is empty")
    return p


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run directory, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        it = _iteration_of(p)
        if it is None or not p.is_dir():
            continue
        try:
            check_checkpoint(p)
        except CheckpointError:
            continue
        found.append((it, p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run directory (None: there is none).

    Also accepts a run directory of the older layout (a plain ``checkpoint/`` directory).
    """
    done = list_checkpoints(run_dir)
    if done:
        return done[-1]
    legacy = Path(run_dir) / LATEST_LINK
    if legacy.is_dir() and not legacy.is_symlink():
        try:
            return check_checkpoint(legacy)
        except CheckpointError:
            return None
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or the newest complete checkpoint of a run directory.

    Raises:
        CheckpointError: if there is none, or it is incomplete.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.is_dir() and ((p / CHECKPOINTS_DIR).is_dir() or (p / "progress.csv").exists()):
        latest = latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"run directory {p} holds no complete checkpoint")
        return latest
    return check_checkpoint(p)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary and trash directories left by killed saves (of dead processes)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    removed = []
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        if not p.name.startswith((".tmp_", ".trash_")):
            continue
        try:
            pid = int(p.name.split("_")[-2])
        except (IndexError, ValueError):
            pid = -1
        if pid == os.getpid() or pid <= 0 or not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in Path(run_dir).glob(f".{LATEST_LINK}.tmp_*"):
        p.unlink(missing_ok=True)
    return removed


def _point_latest(run_dir: Path, target: Path) -> None:
    link = run_dir / LATEST_LINK
    if link.exists() and not link.is_symlink():
        return  # a plain directory of the older layout: leave it alone
    tmp = run_dir / f".{LATEST_LINK}.tmp_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(target, run_dir), tmp)
    os.replace(tmp, link)
    _fsync_path(run_dir)


def _discard(path: Path) -> None:
    trash = path.parent / f".trash_{path.name}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(
    write: Callable[[str], Any],
    run_dir: str | os.PathLike,
    iteration: int,
    *,
    keep: int = 2,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``iteration`` atomically and keep the last ``keep``.

    Args:
        write: writes a checkpoint into the directory it is given (e.g. an Algorithm's
            ``save_to_path``).
        run_dir: the run directory (``checkpoints/`` and the ``checkpoint`` link go there).
        iteration: names the checkpoint; if a complete one of this iteration exists already,
            nothing is written (the state of an iteration does not change).
        keep: complete checkpoints kept (>= 1; the newest is never deleted).
        extra: more entries for the manifest (JSON-serialisable).

    Returns:
        The complete checkpoint directory.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    run_dir = Path(run_dir).resolve()
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(run_dir)
    final = root / checkpoint_name(iteration)
    if final.exists():
        try:
            check_checkpoint(final)
        except CheckpointError:
            _discard(final)
    if not final.exists():
        tmp = root / f".tmp_{final.name}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        try:
            write(str(tmp))
            _write_manifest(tmp, iteration, extra)
            _fsync_tree(tmp)
            os.rename(tmp, final)
            _fsync_path(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    _point_latest(run_dir, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        if old != final:
            _discard(old)
    return final


def save_algorithm(algo, run_dir: str | os.PathLike, *, keep: int = 2) -> Path:
    """:func:`save_checkpoint` of an Algorithm at its current iteration."""
    counters = getattr(algo, "mbmpo_counters", None) or getattr(algo, "mbpo_counters", {})
    extra = {"num_real_steps_lifetime": int(counters.get("real_steps", 0))}
    return save_checkpoint(algo.save_to_path, run_dir, algo.iteration, keep=keep, extra=extra)


# ---------------------------------------------------------------------------- run directories
RUN_INFO = "run.json"
PROGRESS = "progress.csv"
# what a training run writes into its directory (--overwrite deletes exactly these)
_RUN_FILES = (PROGRESS, RUN_INFO, CHECKPOINTS_DIR, LATEST_LINK, "learning_curve.png")
_RUN_GLOBS = ("events.out.tfevents.*",)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (exists, missing, not writable)."""


def run_files(run_dir: str | os.PathLike) -> list[Path]:
    """The files and directories of a training run in ``run_dir``."""
    d = Path(run_dir)
    found = [d / n for n in _RUN_FILES if (d / n).exists() or (d / n).is_symlink()]
    for pattern in _RUN_GLOBS:
        found += sorted(d.glob(pattern))
    return found


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp_{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare_new_run(run_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Create (or, with ``overwrite``, clear) the directory of a new run.

    Raises:
        RunDirError: ``run_dir`` is a file, cannot be created or written, or already holds a
            run (without ``overwrite``): the message names ``--resume`` and ``--overwrite``.
    """
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise RunDirError(f"--output {d} is a file, not a directory")
    existing = run_files(d) if d.is_dir() else []
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing[:4])
        raise RunDirError(f"{d} already holds a run ({names}); pass --resume to continue it "
                          "or --overwrite to start it over")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to --output {d}: {e.strerror or e}") from None
    for p in existing:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return d


def write_run_info(run_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    """Store how a run was started (``run.json``), so ``--resume`` can restate it."""
    _atomic_write_text(Path(run_dir) / RUN_INFO, json.dumps(info, indent=1, sort_keys=True))


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / RUN_INFO).read_text())
    except (OSError, ValueError):
        return {}


def resume_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a resumed run continues from (the newest complete one).

    Raises:
        RunDirError: no such directory, or no complete checkpoint in it.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"nothing to resume: {d} is not a directory")
    ckpt = latest_checkpoint(d)
    if ckpt is None:
        raise RunDirError(f"nothing to resume in {d}: it holds no complete checkpoint "
                          "(start it over with --overwrite)")
    remove_stale(d)
    return ckpt


def trim_progress(run_dir: str | os.PathLike, last_iteration: int) -> int:
    """Drop the ``progress.csv`` rows after ``last_iteration`` (iterations a resumed run will
    redo) and any torn row; returns the rows kept. The file is replaced atomically."""
    import csv

    path = Path(run_dir) / PROGRESS
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return 0
    header, kept = rows[0], []
    col = header.index("iteration") if "iteration" in header else 0
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        try:
            it = int(float(row[col]))
        except ValueError:
            continue
        if it <= last_iteration:
            kept.append(row)
    tmp = path.with_name(f".{path.name}.tmp_{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(kept)
