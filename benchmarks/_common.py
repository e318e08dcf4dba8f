"""Shared helpers of the benchmark scripts (timing, reporting, HalfCheetah data).

Not part of the package: the scripts in this folder put it on ``sys.path`` themselves (Python
adds a script's own folder), so run them as ``python benchmarks/<script>.py``.

Timing policy (the machine is shared and noisy): every figure is a ratio against a baseline
measured in the same run. :func:`interleaved` runs all variants once per repetition, in a
rotating order, so slow phases of the machine hit every variant alike; per-repetition ratios are
then summarised by their median (:func:`median_ratio`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
MACHINE_NOTE = "2-core CPU, shared"

ENV_ID = "HalfCheetah-v5"
OBS_DIM, ACT_DIM = 18, 6  # HalfCheetah-v5 with the x position kept (as make_env builds it)


# ----------------------------------------------------------------------------------- timing
def interleaved(
    variants: dict[str, Callable[[], object]], reps: int, *, warmup: bool = True
) -> dict[str, list[float]]:
    """Wall time (s) of every variant, ``reps`` times, alternating the variants.

    Repetition ``r`` runs the variants rotated by ``r`` (A B C, B C A, C A B, ...). With
    ``warmup`` every variant runs once, untimed, first.
    """
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over repetitions of ``num[r] / den[r]`` (paired, same repetition)."""
    return median([a / b for a, b in zip(num, den, strict=True)])


def spread(xs: Sequence[float]) -> str:
    """``min-max`` of a list of ratios, for the tables."""
    return f"{min(xs):.2f}-{max(xs):.2f}"


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# ----------------------------------------------------------------------------------- report
def utc_date() -> str:
    """The date as ``date -u +%F`` prints it."""
    try:
        out = subprocess.run(["date", "-u", "+%F"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def command_line() -> str:
    """The command that ran this script, relative to the repo root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_txt = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_txt = str(script)
    return " ".join([".venv/bin/python", script_txt, *sys.argv[1:]])


DEFAULT_THREADS = torch.get_num_threads()  # before any script changes it


def header_lines(threads: Sequence[int], load_before: str) -> list[str]:
    return [
        f"- Command: `{command_line()}`",
        f"- Date (UTC): {utc_date()}",
        f"- Machine: {MACHINE_NOTE} ({os.cpu_count()} logical CPUs, {cpu_model()}); "
        f"load average (1/5/15 min) {load_before} at start, {load_average()} at end",
        f"- torch {torch.__version__}; torch threads used: "
        f"{', '.join(str(t) for t in threads)} (torch default here: {DEFAULT_THREADS}); "
        f"Python {platform.python_version()}",
    ]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    fmt = lambda row: "| " + " | ".join(  # noqa: E731
        c.ljust(w) for c, w in zip(row, widths, strict=True)
    ) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(list(headers)), sep, *(fmt(r) for r in cells)])


def update_section(name: str, title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the block between ``<!-- name:start -->`` and ``<!-- name:end -->``.

    Text outside the markers (e.g. hand-written analysis) is left alone.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n## {title}\n\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


RESULTS = REPO_ROOT / "benchmarks" / "results"
_RUN_NAME = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})(?P<rest>.*?)(?:-(?P<n>\d+))?$")


def _run_order(d: Path) -> tuple[str, str, int]:
    m = _RUN_NAME.match(d.name)
    return (m["date"], m["rest"], int(m["n"] or 1)) if m else (d.name, "", 0)


def run_dirs(script: str, tag: str = "") -> list[Path]:
    """The run folders of ``script`` named with ``tag`` (see :func:`new_run_dir`), oldest
    first."""
    suffix = re.escape(f"-{tag}" if tag else "")
    name = re.compile(rf"^\d{{4}}-\d{{2}}-\d{{2}}{suffix}(?:-\d+)?$")
    base = RESULTS / script
    found = [d for d in base.iterdir() if d.is_dir() and name.match(d.name)] \
        if base.is_dir() else []
    return sorted(found, key=_run_order)


def all_run_dirs(script: str) -> list[Path]:
    """Every run folder of ``script`` (any tag), oldest first."""
    base = RESULTS / script
    found = [d for d in base.iterdir() if d.is_dir() and _RUN_NAME.match(d.name)] \
        if base.is_dir() else []
    return sorted(found, key=_run_order)


def new_run_dir(script: str, tag: str = "",
                taken: Callable[[Path], bool] = lambda d: d.exists()) -> Path:
    """``benchmarks/results/<script>/<YYYY-MM-DD>[-<tag>]/`` (UTC date): where one run of
    ``script`` keeps its results, instead of ``_v2``/``_v3`` file names. A folder that is
    ``taken`` (by default: it exists) gets ``-2``, ``-3``, ... so one day's runs stay apart.
    Not created."""
    base = f"{utc_date()}-{tag}" if tag else utc_date()
    d, n = RESULTS / script / base, 2
    while taken(d):
        d, n = RESULTS / script / f"{base}-{n}", n + 1
    return d


def results_link(path: Path) -> str:
    """``path`` as BENCHMARKS.md links it (relative to the repo root; absolute outside it)."""
    path = path.resolve()
    return (path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path).as_posix()


# ----------------------------------------------------------------------------------- data
def collect_halfcheetah(num_episodes: int, horizon: int = 200, seed: int = 0) -> dict:
    """Real ``HalfCheetah-v5`` transitions (uniform random actions) from ``make_env``.

    Returns ``{"obs", "act", "next_obs"}`` float32 arrays (``N x 18``, ``N x 6``, ``N x 18``),
    ``"source"`` (a note) and the action bounds. Falls back to synthetic data of the same
    shapes if MuJoCo is unavailable (the timings do not depend on the values much; the note
    says which was used).
    """
    from mbmpo_ray.envs import make_env

    rng = np.random.default_rng(seed)
    with _mujoco_warnings_to_memory():
        return _collect(make_env, rng, num_episodes, horizon, seed)


@contextlib.contextmanager
def _mujoco_warnings_to_memory():
    """Keep MuJoCo's model-compiler warnings (e.g. the HalfCheetah ``settotalmass``
    deprecation) out of a ``MUJOCO_LOG.TXT`` in the working directory."""
    try:
        import mujoco

        previous = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(lambda msg: None)
    except (ImportError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def _collect(make_env, rng, num_episodes: int, horizon: int, seed: int) -> dict:
    try:
        env = make_env(ENV_ID, horizon=horizon)
    except Exception as exc:  # noqa: BLE001 - any failure to build MuJoCo -> synthetic data
        n = num_episodes * horizon
        obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
        act = rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32)
        nxt = obs + 0.1 * rng.normal(size=(n, OBS_DIM)).astype(np.float32)
        return {
            "obs": obs, "act": act, "next_obs": nxt,
            "low": np.full(ACT_DIM, -1.0, np.float32), "high": np.full(ACT_DIM, 1.0, np.float32),
            "source": f"synthetic Gaussian data ({type(exc).__name__}: {exc})",
        }
    assert env.observation_space.shape == (OBS_DIM,), env.observation_space
    low, high = env.action_space.low, env.action_space.high
    obs_l, act_l, next_l = [], [], []
    for ep in range(num_episodes):
        obs, _ = env.reset(seed=seed + ep)
        for _ in range(horizon):
            act = rng.uniform(low, high).astype(np.float32)
            nxt, _, terminated, truncated, _ = env.step(act)
            obs_l.append(obs)
            act_l.append(act)
            next_l.append(nxt)
            obs = nxt
            if terminated or truncated:
                break
    env.close()
    return {
        "obs": np.asarray(obs_l, np.float32),
        "act": np.asarray(act_l, np.float32),
        "next_obs": np.asarray(next_l, np.float32),
        "low": low.astype(np.float32),
        "high": high.astype(np.float32),
        "source": f"{len(obs_l)} real {ENV_ID} transitions (make_env, random actions)",
    }


def fitted_ensemble(data: dict, epochs: int, seed: int = 0, hidden=(512, 512), k: int = 5):
    """A paper-size ``DynamicsEnsemble`` fitted for ``epochs`` epochs on ``data`` (so imagined
    rollouts stay in a realistic range, which matters for TRPO's line search)."""
    from mbmpo_ray.models import DynamicsEnsemble, FitConfig, fit_ensemble

    torch.manual_seed(seed)
    ens = DynamicsEnsemble(OBS_DIM, ACT_DIM, ensemble_size=k, hidden_sizes=hidden)
    fit_ensemble(
        ens, data["obs"], data["act"], data["next_obs"],
        FitConfig(model_max_epochs=epochs, model_patience=epochs + 1),
        generator=torch.Generator().manual_seed(seed),
    )
    return ens.eval()


def on_learners(algo, fn: Callable) -> list:
    """``fn(learner)`` on every learner of ``algo``, their results in rank order. This
    module's functions travel by value: the learner processes cannot import it."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return [r.get() for r in algo.learner_group.foreach_learner(fn)]


def time_collectives(learner) -> None:
    """Wrap ``torch.distributed.all_reduce`` in this learner's process with a timer (run it
    with :func:`on_learners`; :func:`read_collectives` reads and resets it)."""
    import torch.distributed as dist

    if getattr(dist.all_reduce, "_bench", None) is not None:
        return
    orig, stats = dist.all_reduce, {"s": 0.0, "calls": 0, "numel": 0}

    def all_reduce(tensor, *args, **kwargs):
        t0 = time.perf_counter()
        out = orig(tensor, *args, **kwargs)
        stats["s"] += time.perf_counter() - t0
        stats["calls"] += 1
        stats["numel"] += tensor.numel()
        return out

    all_reduce._bench = stats
    dist.all_reduce = all_reduce


def read_collectives(learner) -> dict:
    """``{"s", "calls", "numel"}`` of this learner's all-reduces since the last read."""
    import torch.distributed as dist

    stats = getattr(dist.all_reduce, "_bench", None) or {"s": 0.0, "calls": 0, "numel": 0}
    out = dict(stats)
    stats.update(s=0.0, calls=0, numel=0)
    return out
