"""The paper's sweeps (alpha, ensemble size, horizon) run for real through ``mbmpo-ray tune``,
summarised from Tune's own results (issue 13).

For each sweep name (``tune_configs/sweeps.py``, e.g. ``pendulum_alpha``):

1. ``--run`` runs ``mbmpo-ray tune <sweep> --storage runs/tune --resume`` (a sweep that was
   cut off continues; finished trials are kept by Tune);
2. every trial's ``progress.csv`` and ``params.json`` in Tune's experiment directory
   (``runs/tune/mbmpo_<sweep>``) is reduced to ``real_steps, episode_return_mean, time_s`` and
   copied to ``benchmarks/results/sweeps/<sweep>/<setting>=<value>_seed<k>.csv`` (committed);
3. the report: final return (mean of the last two iterations' real episodes, per trial) per
   swept value with mean, std and min-max over seeds, a PNG of the return curves (mean and
   min-max band per value) and of the final returns, and a BENCHMARKS.md section.

    .venv/bin/python benchmarks/exp_sweeps.py pendulum_alpha --run
    .venv/bin/python benchmarks/exp_sweeps.py pendulum_alpha pendulum_ensemble_size \
        pendulum_horizon            # report only (from the committed CSVs + Tune's dirs)

A sweep too long for one sitting is also defined in parts (``report_as`` names the whole, e.g.
``model_bias_b0``, ``model_bias_b0.5``, ``model_bias_b1`` of ``model_bias``): each part is its
own Tune experiment, its CSVs go to the whole's directory, and its report is the whole's, from
every part's CSVs committed so far.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, markdown_table, update_section, utc_date  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "sweeps"
COLUMNS = ("real_steps", "episode_return_mean", "time_s")


def run(sweep: str, storage: Path, max_concurrent: int | None) -> int:
    cmd = [str(REPO_ROOT / ".venv" / "bin" / "mbmpo-ray"), "tune", sweep, "--storage",
           str(storage), "--resume"]
    if max_concurrent:
        cmd += ["--max-concurrent", str(max_concurrent)]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO_ROOT)


def trial_label(params: dict, key: str) -> str:
    """``key=value`` of the trial's swept setting (tied points keep it in ``mbmpo_point``), or
    ``k1=v1,k2=v2`` for a grid of joint points (``key == "mbmpo_point"``)."""
    point = params.get("mbmpo_point") or {}
    if key == "mbmpo_point":
        return ",".join(f"{k}={v}" for k, v in point.items())
    # a tied sweep's value is in the point (the top level keeps the base config's value)
    return f"{key}={point[key] if key in point else params.get(key)}"


def export(sweep_name: str, storage: Path) -> list[Path]:
    """Copy every trial of Tune's experiment directory to a small CSV; returns them all."""
    import tune_configs.sweeps as sweeps

    sweep = sweeps.SWEEPS[sweep_name]
    (key, _), = sweep["grid"].items()
    out_dir = RESULTS / sweep.get("report_as", sweep_name)
    exp = storage / f"mbmpo_{sweep_name}"
    for trial in sorted(exp.glob("*/params.json")) if exp.exists() else []:
        params = json.loads(trial.read_text())
        progress = trial.parent / "progress.csv"
        if not progress.exists():
            continue
        with open(progress, newline="") as f:
            rows = [(r.get("num_real_steps_lifetime"), r.get("episode_return_mean"),
                     r.get("time_total_s")) for r in csv.DictReader(f)]
        rows = [r for r in rows if r[0] not in (None, "")]
        if not rows:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{trial_label(params, key)}_seed{params.get('seed')}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows(rows)
    return sorted(out_dir.glob("*.csv")) if out_dir.exists() else []


def finished(sweep_name: str) -> bool:
    """Whether every trial of a sweep (each grid point x seed) is in its CSVs with all its
    iterations, so ``--run`` has nothing left to do (e.g. a part committed by an earlier
    session on another machine, whose Tune directory is gone)."""
    import tune_configs.sweeps as sweeps
    from mbmpo_ray.tuning import sweep_seeds

    sweep = sweeps.SWEEPS[sweep_name]
    (key, values), = sweep["grid"].items()
    out_dir = RESULTS / sweep.get("report_as", sweep_name)
    for value in values:
        # Tune's params.json has a joint point's keys in sorted order, so its CSVs' names too
        label = trial_label({key: dict(sorted(value.items())) if isinstance(value, dict)
                             else value}, key)
        for seed in sweep_seeds(sweep):
            path = out_dir / f"{label}_seed{seed}.csv"
            if not path.exists() or len(read(path)) < sweep["iterations"]:
                return False
    return True


def read(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        rows = [[float(x) if x not in ("", "nan") else np.nan for x in r]
                for r in list(csv.reader(f))[1:]]
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _sort_key(label: str):
    """Numeric order of the values where they are numbers."""
    parts = []
    for kv in label.split(","):
        v = kv.split("=", 1)[-1]
        try:
            parts.append((0, float(v), ""))
        except ValueError:
            parts.append((1, 0.0, v))
    return parts


def report(sweep_name: str, paths: list[Path], iterations: int, key: str,
           parts: list[str] = (), seeds: int = 0) -> str | None:
    """The BENCHMARKS.md section of a sweep (``parts``: the sweeps it is also run as; ``seeds``:
    the trials planned per setting, for "trials done", at least the CSVs found)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not paths:
        return None
    runs: dict[str, list[np.ndarray]] = {}
    for p in paths:
        runs.setdefault(p.stem.rsplit("_seed", 1)[0], []).append(read(p))
    order = sorted(runs, key=_sort_key)
    table, finals, finished = [], {}, {}
    for v in order:
        done = finished[v] = [r for r in runs[v] if len(r) >= iterations]
        final = [float(np.nanmean(r[-2:, 1])) for r in done]
        finals[v] = final
        mins = [r[-1, 2] / 60 for r in done]
        table.append([v, f"{len(done)}/{max(len(runs[v]), seeds)}",
                      f"{np.mean(final):.1f}" if final else "-",
                      f"{np.std(final):.1f}" if len(final) > 1 else "-",
                      f"{min(final):.1f} .. {max(final):.1f}" if final else "-",
                      f"{int(done[0][-1, 0]):,}" if done else "-",
                      f"{np.mean(mins):.1f}" if mins else "-"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    shown = [v for v in order if finals[v]]
    for i, v in enumerate(shown):
        done = finished[v]
        n = min(len(r) for r in done)
        x = done[0][:n, 0]
        y = np.stack([r[:n, 1] for r in done])
        line, = a.plot(x, np.nanmean(y, 0), "o-", ms=3, label=v)
        a.fill_between(x, np.nanmin(y, 0), np.nanmax(y, 0), color=line.get_color(), alpha=0.15)
        b.scatter([i] * len(finals[v]), finals[v], color=line.get_color())
        b.errorbar([i], [np.mean(finals[v])], yerr=[np.std(finals[v])], fmt="_k", ms=20,
                   capsize=6)
    a.set_xlabel("real env steps")
    a.set_ylabel("real return (mean, min-max over seeds)")
    a.legend(fontsize=7, loc="best")
    # each column's values (a joint point's one per line), their names once below
    names = [kv.split("=", 1)[0] for kv in shown[0].split(",")] if shown else [key]
    b.set_xlabel(" / ".join(names))
    b.set_xticks(range(len(shown)),
                 ["\n".join(kv.split("=", 1)[1] for kv in v.split(",")) for v in shown])
    b.set_ylabel("final return (seeds, mean +- std)")
    fig.suptitle(f"mbmpo-ray tune {sweep_name}")
    fig.tight_layout()
    png = RESULTS / f"{sweep_name}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return "\n".join([
        f"- Command: `.venv/bin/python benchmarks/exp_sweeps.py {sweep_name} --run` "
        f"(= `mbmpo-ray tune {sweep_name} --storage runs/tune --resume`, then this report)"
        + (f", or in parts, one at a time: {', '.join(f'`{p}`' for p in parts)}"
           if parts else ""),
        f"- Date (UTC): {utc_date()}; 2-core CPU, as many trials at a time as its cores fit; "
        f"per-trial CSVs in `benchmarks/results/sweeps/{sweep_name}/` (from Tune's `progress.csv`)",
        "- Final return: mean of the last two iterations' real episodes (pre-update policy), "
        "per trial; spread over seeds.",
        "",
        markdown_table(["trials of", "trials done", "final return (mean)", "std", "min .. max",
                        "real steps", "minutes per trial"], table),
        "",
        f"![{sweep_name}](benchmarks/results/sweeps/{png.name})",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweeps", nargs="+", help="sweep names from tune_configs/sweeps.py")
    p.add_argument("--run", action="store_true", help="run (or resume) the sweeps first")
    p.add_argument("--storage", default=str(REPO_ROOT / "runs" / "tune"))
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--check", action="store_true",
                   help="only say whether every trial is in the CSVs already (exit 0) or not (1)")
    args = p.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    import tune_configs.sweeps as sweeps
    from mbmpo_ray.tuning import sweep_seeds

    unknown = [s for s in args.sweeps if s not in sweeps.SWEEPS]
    if unknown:
        p.error(f"unknown sweep(s) {unknown}; known: {sorted(sweeps.SWEEPS)}")
    if args.check:
        return 0 if all(finished(name) for name in args.sweeps) else 1
    status = 0
    for name in args.sweeps:
        if args.run and finished(name):
            print(f"{name}: every trial is in its CSVs already, nothing to run")
        elif args.run:
            status |= run(name, Path(args.storage), args.max_concurrent)
        sweep = sweeps.SWEEPS[name]
        (key, _), = sweep["grid"].items()
        whole = sweep.get("report_as", name)
        parts = [n for n, s in sweeps.SWEEPS.items() if s.get("report_as") == whole]
        body = report(whole, export(name, Path(args.storage)), sweep["iterations"], key, parts,
                      seeds=len(sweep_seeds(sweeps.SWEEPS.get(whole, sweep))))
        if body is None:
            print(f"{name}: no trials yet")
            continue
        print(body)
        if not args.no_write:
            update_section(f"sweep-{whole}", f"Sweep `{whole}` (issue 13)", body)
    return status


if __name__ == "__main__":
    sys.exit(main())
