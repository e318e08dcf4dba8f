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

import hashlib
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: str | os.PathLike, iteration: int,
                   extra: dict[str, Any] | None = None) -> None:
    """List every file of the checkpoint in ``root`` with its size and SHA-256 (so a file
    torn, truncated or overwritten with other bytes of the same size is refused by
    :func:`check_checkpoint`), plus ``iteration`` and ``extra``."""
    root = Path(root)
    files = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if p.name in (MANIFEST, MANIFEST + ".tmp"):
                continue
            files[str(p.relative_to(root))] = {"size": p.stat().st_size, "sha256": _sha256(p)}
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
        for rel, entry in manifest.get("files", {}).items():
            # entries: {"size", "sha256"}; checkpoints before checksums: the size alone
            size, digest = (entry, None) if isinstance(entry, int) else (
                entry["size"], entry.get("sha256"))
            f = p / rel
            if not f.is_file():
                raise CheckpointError(f"checkpoint {p} is incomplete: {rel} is missing")
            if f.stat().st_size != size:
                raise CheckpointError(f"checkpoint {p} is incomplete: {rel} has "
                                      f"{f.stat().st_size} bytes, expected {size}")
            if digest is not None and _sha256(f) != digest:
                raise CheckpointError(f"checkpoint {p} is corrupted: the content of {rel} "
                                      "differs from what was saved (checksum mismatch)")
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
            if read_manifest(tmp) is None:  # (an Algorithm's save_to_path writes its own)
                write_manifest(tmp, iteration, extra)
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
    """:func:`save_checkpoint` of a model-based Algorithm at its current iteration."""
    return save_checkpoint(algo.write_checkpoint, run_dir, algo.iteration, keep=keep)


def save_atomically(write: Callable[[str], Any], path: str | os.PathLike) -> Path:
    """``write`` a checkpoint into the directory ``path`` so that a process killed at any
    moment leaves either the previous complete checkpoint or the new one.

    The new checkpoint is written beside ``path`` into a temporary directory and fsynced; then
    the previous one (if any) is renamed to ``.<name>.prev_...``, the new one renamed to
    ``path``, and the previous one deleted. :func:`find_checkpoint` finds the previous one if
    a kill fell between the two renames."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    tmp = path.parent / f".{path.name}.tmp_{tag}"
    try:
        write(str(tmp))
        _fsync_tree(tmp)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.prev_{tag}"
            os.rename(path, old)
        os.rename(tmp, path)
        _fsync_path(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def find_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else the complete previous checkpoint that
    :func:`save_atomically` had moved aside when the saving process was killed (renamed back
    into place); ``path`` unchanged if there is none."""
    path = Path(path).absolute()
    if path.exists():
        return path
    for old in sorted(path.parent.glob(f".{path.name}.prev_*")):
        try:
            check_checkpoint(old)
        except CheckpointError:
            continue
        os.rename(old, path)
        return path
    return path


def checkpoint_algorithm(path: str | os.PathLike) -> str | None:
    """The algorithm (``'mbmpo'``/``'mbpo'``) that wrote a checkpoint, from its manifest or,
    for one without, from the Algorithm class RLlib recorded (None: unknown)."""
    manifest = read_manifest(path)
    if manifest and manifest.get("algo"):
        return manifest["algo"]
    try:
        import pickle

        with open(Path(path) / "class_and_ctor_args.pkl", "rb") as f:
            cls = pickle.load(f)["class"]
    except Exception:  # noqa: BLE001 (not ours, or unreadable: unknown)
        return None
    return getattr(cls, "ALGO_NAME", None)
