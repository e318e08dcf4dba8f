"""Run directories of ``mbmpo-ray train``: what a run writes there, starting a new run without
clobbering another one (or the user's own files), and finding where a resumed run continues
(pure Python; no Ray).

A run directory holds the run's own files (:func:`run_files`) next to anything the user puts
there::

    run_dir/run.json              how the run was started (``--resume`` restates it)
    run_dir/progress.csv          one row per iteration
    run_dir/events.out.tfevents.* TensorBoard
    run_dir/learning_curve.png    the plot drawn at the end
    run_dir/checkpoints/iter_*    complete checkpoints (and .tmp_/.trash_ leftovers of saves)
    run_dir/checkpoint            link to the newest checkpoint

``--overwrite`` deletes exactly these; every other file stays where it is.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mbmpo_ray.algorithm.checkpoints import (
    CHECKPOINTS_DIR,
    LATEST_LINK,
    MANIFEST,
    latest_checkpoint,
    remove_stale,
)

RUN_INFO = "run.json"
PROGRESS = "progress.csv"
PLOT = "learning_curve.png"
# files a training run writes at the top of its directory, by name and by pattern
_RUN_FILES = (PROGRESS, RUN_INFO, PLOT)
_RUN_GLOBS = ("events.out.tfevents.*", f".{RUN_INFO}.tmp_*", f".{PROGRESS}.tmp_*",
              f".{LATEST_LINK}.tmp_*")
# what a save writes into checkpoints/: iter_NNNNNN, and .tmp_/.trash_ leftovers of killed saves
_CHECKPOINT_PREFIXES = ("iter_", ".tmp_iter_", ".trash_iter_")


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (exists, missing, not writable)."""


def _is_our_checkpoint_dir(path: Path) -> bool:
    """A checkpoint directory written by a run (by its manifest or RLlib's metadata file)."""
    return path.is_dir() and ((path / MANIFEST).is_file()
                              or (path / "rllib_checkpoint.json").is_file())


def run_files(run_dir: str | os.PathLike) -> list[Path]:
    """The files and directories a training run wrote in ``run_dir``: ``progress.csv``,
    ``run.json``, the plot, TensorBoard event files, the ``checkpoint`` link and, inside
    ``checkpoints/``, the checkpoints and the leftovers of killed saves. Anything else (in
    ``checkpoints/`` too) is not the run's."""
    d = Path(run_dir)
    found = [d / n for n in _RUN_FILES if (d / n).is_file()]
    for pattern in _RUN_GLOBS:
        found += sorted(p for p in d.glob(pattern) if p.is_file() or p.is_symlink())
    link = d / LATEST_LINK
    if link.is_symlink() or _is_our_checkpoint_dir(link):
        found.append(link)  # the link, or a plain checkpoint directory of the older layout
    root = d / CHECKPOINTS_DIR
    if root.is_dir() and not root.is_symlink():
        found += sorted(p for p in root.iterdir()
                        if p.name.startswith(_CHECKPOINT_PREFIXES) and p.is_dir()
                        and not p.is_symlink())
    return found


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a run that got somewhere: a complete checkpoint or at least
    one ``progress.csv`` row. The leftovers of a run that stopped before its first iteration
    (``run.json``, a header-only ``progress.csv``, empty TensorBoard files) are not one: a new
    run may replace them without ``--overwrite``."""
    d = Path(run_dir)
    if latest_checkpoint(d) is not None:
        return True
    try:
        with open(d / PROGRESS, newline="") as f:
            return sum(1 for row in csv.reader(f) if row) > 1
    except OSError:
        return False


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp_{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def prepare_new_run(run_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Create the directory of a new run, or clear the run in it: with ``overwrite`` (or when
    the run there never completed an iteration, :func:`holds_run`) the files the earlier run
    wrote are deleted (:func:`run_files`); the user's own files are never touched.

    Returns:
        The run directory as an absolute path.

    Raises:
        RunDirError: ``run_dir`` is a file, cannot be created or written, or already holds a
            run (without ``overwrite``): the message names ``--resume`` and ``--overwrite``.
    """
    d = Path(run_dir).expanduser().absolute()
    if d.exists() and not d.is_dir():
        raise RunDirError(f"--output {d} is a file, not a directory")
    if d.is_dir() and not overwrite and holds_run(d):
        names = ", ".join(p.name for p in run_files(d)[:4])
        raise RunDirError(f"{d} already holds a run ({names}); pass --resume to continue it "
                          "or --overwrite to start it over")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to --output {d}: {e.strerror or e}") from None
    for p in run_files(d):
        _remove(p)
    root = d / CHECKPOINTS_DIR
    if root.is_dir() and not root.is_symlink() and not any(root.iterdir()):
        root.rmdir()
    return d


def write_run_info(run_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    """Store how a run was started (``run.json``), so ``--resume`` can restate it."""
    _atomic_write_text(Path(run_dir) / RUN_INFO, json.dumps(info, indent=1, sort_keys=True))


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` of a run directory (empty: none, or unreadable)."""
    try:
        return json.loads((Path(run_dir) / RUN_INFO).read_text())
    except (OSError, ValueError):
        return {}


def resume_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a resumed run continues from (the newest complete one), as an absolute
    path (RLlib's ``restore_from_path`` refuses relative ones).

    Raises:
        RunDirError: no such directory, or no complete checkpoint in it.
    """
    d = Path(run_dir).expanduser().absolute()
    if not d.is_dir():
        raise RunDirError(f"nothing to resume: {d} is not a directory")
    ckpt = latest_checkpoint(d)
    if ckpt is None:
        raise RunDirError(f"nothing to resume in {d}: it holds no complete checkpoint "
                          "(start it over with --overwrite)")
    remove_stale(d)
    return ckpt.absolute()


def trim_progress(run_dir: str | os.PathLike, last_iteration: int) -> int:
    """Drop the ``progress.csv`` rows after ``last_iteration`` (iterations a resumed run will
    redo) and any torn row; returns the rows kept. The file is replaced atomically."""
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
