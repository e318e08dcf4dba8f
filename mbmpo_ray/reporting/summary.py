"""What ``mbmpo-ray train`` prints before the first iteration (:func:`run_banner`) and after
the last (:func:`summary_items`), for either algorithm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mbmpo_ray.reporting.columns import ColumnSet, column_set, finite
from mbmpo_ray.reporting.fmt import as_int, fmt_duration, fmt_num, fmt_return, plural


def _stop_text(stop_steps: int | None, stop_iterations: int | None) -> str:
    return " or ".join(s for s in (
        plural(stop_steps, "real step") if stop_steps else "",
        plural(stop_iterations, "iteration") if stop_iterations is not None else "") if s)


def run_banner(config, stop_steps: int | None, stop_iterations: int | None,
               out: str | Path) -> str:
    """The lines printed before training: the env, the MB-MPO (or MBPO) sizes, the stop and
    the output."""
    stop = _stop_text(stop_steps, stop_iterations)
    if not hasattr(config, "num_tasks"):  # MBPOConfig
        first = getattr(config, "initial_random_steps", 0) or 0
        return "\n".join([
            f"MBPO on {config.model_env_id}",
            f"  {config.ensemble_size} dynamics models ({config.num_elites} elites); "
            f"{config.rollouts_per_step} model rollouts per real step, rollout schedule "
            f"{tuple(config.rollout_schedule)}",
            f"  per iteration: {plural(config.real_steps_per_iter, 'real step')}"
            + (f" (the first also {plural(first, 'random step')})" if first else "")
            + f", {config.updates_per_step} SAC updates per step, real_ratio "
            f"{config.real_ratio}",
            f"  stop at {stop}; output in {out}/",
        ])
    return "\n".join([
        f"MB-MPO on {config.model_env_id}",
        f"  {config.ensemble_size} dynamics models; each meta step imagines "
        f"{config.num_tasks} tasks x {config.rollouts_per_task} rollouts x {config.horizon} "
        "steps",
        f"  per iteration: {plural(config.real_steps_per_iter, 'real step')}, "
        f"{plural(config.meta_steps_per_iter, 'meta step')}, inner_lr {config.inner_lr}",
        f"  stop at {stop}; output in {out}/",
    ])


def _return(row: Mapping[str, Any], column: str) -> str:
    return fmt_return(row.get(column), row.get(f"{column}_std")).strip()


def _return_items(done: Sequence[Mapping[str, Any]], cs: ColumnSet) -> list[tuple[str, str]]:
    """Best and final headline return; MB-MPO's final adapted return."""
    col, last, items = cs.return_column, done[-1], []
    scored = [r for r in done if finite(r.get(col)) is not None]
    if scored:
        best = max(scored, key=lambda r: r[col])
        items.append((f"best {cs.policy}return",
                      f"{_return(best, col)}   (iteration {as_int(best['iteration'])}, "
                      f"{as_int(best.get('real_steps')):,} real steps)"))
    items.append((f"final {cs.policy}return", _return(last, col)))
    if cs.algo == "mbmpo":
        items.append(("final adapted return", _return(last, "return_adapted")
                      + "   (the same iteration's theta after one inner step)"))
    return items


def _wall_clock(done: Sequence[Mapping[str, Any]], wall_s: float, cs: ColumnSet) -> str:
    """The wall clock, the time in iterations and each phase's share of it."""
    phases = {name: sum(finite(r.get(col)) or 0.0 for r in done) for name, col in cs.phases}
    total = sum(phases.values())
    in_iters = sum(finite(r.get("time_iter")) or 0.0 for r in done)
    share = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in phases.items()) if total else ""
    return fmt_duration(wall_s) + (
        f", {fmt_duration(in_iters)} in iterations ({share})" if share else "")


def summary_items(rows: Sequence[Mapping[str, Any]], *, wall_s: float,
                  files: Mapping[str, Any], status: str,
                  algo: str = "mbmpo") -> tuple[str, list[tuple[str, str]]]:
    """The closing summary: a title and (label, value) lines, from ``algo``'s
    ``progress.csv`` rows (MBPO: no adapted policies or meta update; the return is the SAC
    policy's)."""
    cs = column_set(algo)
    done = [r for r in rows if finite(r.get("iteration")) is not None]
    if not done:
        return f"no iteration completed ({status})", [
            ("wall clock", fmt_duration(wall_s))] + [(k, str(v)) for k, v in files.items()]
    last = done[-1]
    title = (f"{status}: {plural(as_int(last['iteration']), 'iteration')}, "
             f"{plural(as_int(last.get('real_steps')), 'real step')} in "
             f"{fmt_duration(wall_s)}")
    items = _return_items(done, cs)
    random = [r["return_random"] for r in done if finite(r.get("return_random")) is not None]
    if random:
        items.append(("random-action return", f"{fmt_num(random[0]).strip()}   (baseline)"))
    items.append(("real env steps", f"{as_int(last.get('real_steps')):,} learned from, "
                                     f"{as_int(last.get('eval_steps')):,} in evaluation"))
    steps_col, steps_label = cs.model_steps
    items.append((steps_label, f"{as_int(last.get(steps_col)):,}"))
    if "sac_updates" in cs.names:
        items.append(("SAC updates", f"{as_int(last.get('sac_updates')):,}"))
    items.append(("wall clock", _wall_clock(done, wall_s, cs)))
    items += [(k, str(v)) for k, v in files.items()]
    return title, items
