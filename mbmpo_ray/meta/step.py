"""One MB-MPO meta step (Clavera et al. 2018, Alg. 1, lines 6-9) and the final task adaptation.

:func:`meta_step` composes the inner loop (:func:`~mbmpo_ray.meta.inner.adapt_tasks`) and the
outer step (:mod:`mbmpo_ray.meta.outer`); :func:`adapt_policies` runs the same inner loop once
more after the meta steps to get the adapted task policies ``theta'_t`` that collect real data.
Both can run on a share of the tasks, one learner of N (:mod:`mbmpo_ray.meta.hooks`), and
:func:`meta_step` reports its pieces through a phase hook.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from mbmpo_ray.imagination import ImaginedBatch, task_members
from mbmpo_ray.meta.config import MetaConfig
from mbmpo_ray.meta.hooks import (
    AllReduce,
    PhaseFn,
    Reduce,
    identity,
    no_phase,
    task_mean_reduction,
)
from mbmpo_ray.meta.inner import (
    AdaptedTasks,
    Params,
    SampleFn,
    TaskBatch,
    adapt_tasks,
    detach,
    estimate_advantages,
    imagined_return,
    sample_tasks,
)
from mbmpo_ray.meta.outer import ppo_outer_step, trpo_outer_step
from mbmpo_ray.meta.policy import GaussianMLPPolicy
from mbmpo_ray.meta.returns import explained_variance

Diagnostics = dict[str, float | np.ndarray]
DisagreementFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def meta_step(
    policy: GaussianMLPPolicy,
    params: Params,
    sample_fn: SampleFn,
    config: MetaConfig,
    ensemble_size: int | None = None,
    disagreement_fn: DisagreementFn | None = None,
    *,
    tasks: range | None = None,
    all_reduce: AllReduce | None = None,
    phase: PhaseFn = no_phase,
) -> tuple[Params, Diagnostics]:
    """One MB-MPO meta-policy step over ``config.num_tasks`` tasks.

    1. sample pre-update trajectories for all T tasks with ``theta`` expanded to T;
    2. fit per-task linear baselines, compute advantages, adapt ``theta -> theta'_t``
       (repeated ``num_inner_steps`` times, each with freshly sampled trajectories);
    3. sample post-update trajectories with ``theta'_t``;
    4. outer TRPO / PPO step on the post-adaptation surrogate through the inner step(s).

    Args:
        policy: architecture. params: unbatched meta-parameters ``theta``.
        sample_fn: ``sample_fn(task_params) -> ImaginedBatch`` with T-batched params (leading
            axis T, or ``len(tasks)``); usually wraps :func:`mbmpo_ray.imagination.imagine`.
        config: :class:`~mbmpo_ray.meta.config.MetaConfig` (validated here).
        ensemble_size: K, only to report the task -> member mapping
            (:func:`mbmpo_ray.imagination.task_members`, which also checks it).
        disagreement_fn: if given, also report :func:`plasticity` (the inner step's policy
            change against this ensemble disagreement on the visited states).
        tasks: this learner's share of the T tasks (:func:`~mbmpo_ray.meta.hooks.task_range`;
            ``sample_fn`` samples task ``tasks[i]`` at index i). Default: all tasks.
        all_reduce: sums a tensor over the learners (:mod:`~mbmpo_ray.meta.hooks`); it
            combines the outer gradient, every CG Hessian-vector product and the line-search
            values, so every learner (same ``params`` and ``config``) takes the same step.
        phase: ``phase(name)`` -> context manager around each piece, in the order of
            :data:`~mbmpo_ray.meta.hooks.META_STEP_PHASES` (timing; default: no-op).

    Returns:
        ``(new_params, diagnostics)``. Diagnostics: ``pre_return_per_task`` /
        ``post_return_per_task`` (arrays of length T, mean undiscounted imagined return) and
        their ``*_mean``, ``adaptation_gain``, ``surrogate_before/after``, ``kl_after``,
        ``ls_steps``, ``ls_accepted`` (1.0/0.0), ``ls_step_fraction`` and ``trpo_step_size``
        (TRPO only), ``outer_grad_norm``, ``inner_grad_norm`` (mean over tasks
        of the first inner step) and ``inner_grad_norm_per_task``, ``baseline_ev_pre/post``,
        ``policy_std_mean``, ``entropy``, ``task_members`` (if ``ensemble_size``) and
        ``time_sample`` / ``time_optimize`` seconds. With ``tasks``, the per-task arrays,
        ``baseline_ev_*``, ``plasticity_*``, ``task_members`` are this learner's; the rest
        (``*_mean``, ``adaptation_gain``, ``inner_grad_norm``, outer step) all tasks'.
    """
    config.validate()
    tasks = range(config.num_tasks) if tasks is None else tasks
    reduce = task_mean_reduction(all_reduce, len(tasks), config.num_tasks)
    diag: Diagnostics = {}
    if ensemble_size is not None:
        diag["task_members"] = task_members(config.num_tasks, ensemble_size).numpy()[tasks]
    params = detach(params)
    t0 = time.perf_counter()
    inner = adapt_tasks(policy, params, sample_fn, config, with_first_grads=True,
                        num_tasks=len(tasks), phase=phase)
    with phase("diagnostics_pre"):
        diag.update(_pre_update_diagnostics(inner))
    if disagreement_fn is not None:
        with phase("plasticity"):
            diag.update(plasticity(policy, params, inner.task_params, inner.first_raw,
                                   disagreement_fn))
    raw_post, post, t_sample = _sample_post_update(policy, inner, sample_fn, config, phase)
    with phase("diagnostics_post"):
        diag.update(_post_update_diagnostics(raw_post, post, float(diag["pre_return_mean"])))
        _reduce_task_means(diag, reduce, params["log_std"].device)

    outer_step = trpo_outer_step if config.outer_optimizer == "trpo" else ppo_outer_step
    new_params, info = outer_step(policy, params, inner.batches, post, config,
                                  reduce=reduce, phase=phase)
    diag.update(info)
    diag["policy_std_mean"] = float(new_params["log_std"].exp().mean())
    diag["entropy"] = float(policy.entropy(new_params))
    diag["time_sample"] = t_sample
    diag["time_optimize"] = time.perf_counter() - t0 - t_sample
    return new_params, diag


def adapt_policies(
    policy: GaussianMLPPolicy,
    params: Params,
    sample_fn: SampleFn,
    config: MetaConfig,
    *,
    tasks: range | None = None,
) -> Params:
    """The adapted task policies ``theta'_t`` of ``theta`` (e.g. after the meta steps).

    The inner loop of :func:`meta_step` without its diagnostics: ``num_inner_steps`` times
    sample with the current task params, estimate advantages, take a first-order inner step.

    Args:
        policy: architecture. params: unbatched ``theta``.
        sample_fn, config: as in :func:`meta_step` (``config`` is validated here).
        tasks: this learner's tasks (as in :func:`meta_step`; no collective is needed: every
            task adapts on its own data). Default: all ``config.num_tasks``.

    Returns:
        Detached T-batched params (leading axis ``config.num_tasks``, or ``len(tasks)``); with
        ``inner_lr = 0`` every task gets ``theta``.
    """
    config.validate()
    num_tasks = config.num_tasks if tasks is None else len(tasks)
    return adapt_tasks(policy, detach(params), sample_fn, config, num_tasks=num_tasks).task_params


def plasticity(
    policy: GaussianMLPPolicy,
    params: Params,
    task_params: Params,
    raw: ImaginedBatch,
    disagreement_fn: DisagreementFn,
    *,
    stride: int = 10,
    bins: int = 5,
) -> Diagnostics:
    """How much the inner step changes the policy where the models disagree (MB-MPO Fig. 3).

    On the states the pre-update policy visited (``raw``, every ``stride``-th step of every
    rollout): ``KL(pi_theta(.|s) || pi_theta'_t(.|s))`` of each task's adapted policy and
    ``disagreement_fn(obs_T_M_D, act_T_M_A) -> T x M`` (e.g. the std of the members'
    predictions, :func:`~mbmpo_ray.imagination.member_disagreement`).

    Returns ``plasticity_kl_mean``, ``plasticity_disagreement_mean``, ``plasticity_rank_corr``
    (Spearman correlation of the two over states) and, for ``bins`` quantile bins of the
    disagreement (low to high), ``plasticity_kl_bin{i}`` / ``plasticity_disagreement_bin{i}``
    (bin means).
    """
    num_tasks = raw.obs.shape[0]
    flat = lambda x: x[:, :, ::stride].reshape(num_tasks, -1, *x.shape[3:])  # noqa: E731
    obs, act, mask = flat(raw.obs), flat(raw.actions), flat(raw.mask) > 0
    with torch.no_grad():
        kl = policy.kl(policy.expand_params(params, num_tasks), task_params, obs, batched=True)
        dis = disagreement_fn(obs, act)
    kl, dis = kl[mask].double(), dis[mask].double()
    out: Diagnostics = {"plasticity_kl_mean": float(kl.mean()),
                        "plasticity_disagreement_mean": float(dis.mean())}
    rank = lambda x: torch.argsort(torch.argsort(x)).double()  # noqa: E731
    rk, rd = rank(kl), rank(dis)
    rk, rd = rk - rk.mean(), rd - rd.mean()
    out["plasticity_rank_corr"] = float((rk * rd).sum() / (rk.norm() * rd.norm()).clamp_min(1e-12))
    order = torch.argsort(dis)
    for i, part in enumerate(torch.tensor_split(order, bins)):
        out[f"plasticity_kl_bin{i}"] = float(kl[part].mean())
        out[f"plasticity_disagreement_bin{i}"] = float(dis[part].mean())
    return out


def _sample_post_update(
    policy: GaussianMLPPolicy,
    inner: AdaptedTasks,
    sample_fn: SampleFn,
    config: MetaConfig,
    phase: PhaseFn,
) -> tuple[ImaginedBatch, TaskBatch, float]:
    """Trajectories of the adapted task params, their advantages and the time spent in
    ``sample_fn`` (pre- and post-update)."""
    task_params = inner.task_params
    num_tasks = task_params[next(iter(task_params))].shape[0]
    ts = time.perf_counter()
    with phase("sample_post"):
        raw_post = sample_tasks(sample_fn, task_params, num_tasks)
    t_sample = inner.sample_seconds + time.perf_counter() - ts
    with phase("advantages_post"):
        post = estimate_advantages(policy, task_params, raw_post, config.gamma,
                                   config.gae_lambda, config.normalize_advantages,
                                   config.baseline_reg_coeff)
    return raw_post, post, t_sample


def _reduce_task_means(diag: Diagnostics, reduce: Reduce, device: torch.device) -> None:
    """Make the task means of ``diag`` means over all tasks (in place; one collective, on
    ``device``: the parameters', which NCCL needs)."""
    if reduce is identity:
        return
    keys = ("pre_return_mean", "post_return_mean", "adaptation_gain", "inner_grad_norm")
    means = reduce(torch.tensor([float(diag[k]) for k in keys], dtype=torch.float64,
                                device=device))
    diag.update({k: float(v) for k, v in zip(keys, means, strict=True)})


def _pre_update_diagnostics(inner: AdaptedTasks) -> Diagnostics:
    """Return, baseline fit and inner-gradient norms of the first inner step."""
    tb, grads = inner.batches[0], inner.first_grads
    num_tasks = tb.obs.shape[0]
    pre_ret = imagined_return(inner.first_raw).detach().double().cpu().numpy()
    sq = sum(v.detach().pow(2).reshape(num_tasks, -1).sum(-1) for v in grads.values())
    norms = torch.sqrt(sq).double().cpu().numpy()
    return {
        "pre_return_per_task": pre_ret,
        "pre_return_mean": float(pre_ret.mean()),
        "baseline_ev_pre": explained_variance(tb.values, tb.returns, tb.mask),
        "inner_grad_norm_per_task": norms,
        "inner_grad_norm": float(norms.mean()),
    }


def _post_update_diagnostics(
    raw_post: ImaginedBatch, post: TaskBatch, pre_return_mean: float
) -> Diagnostics:
    """Return of the adapted policies, adaptation gain and the post-update baseline fit."""
    post_ret = imagined_return(raw_post).detach().double().cpu().numpy()
    return {
        "post_return_per_task": post_ret,
        "post_return_mean": float(post_ret.mean()),
        "adaptation_gain": float(post_ret.mean() - pre_return_mean),
        "baseline_ev_post": explained_variance(post.values, post.returns, post.mask),
    }
