"""Core throughput of MB-MPO's batched kernels at paper sizes (HalfCheetah-v5, CPU).

(a) imagined transitions/s of :func:`mbmpo_ray.imagination.imagine` (one batched tensor program
    for all K members) against two gym-style baselines that step one model env at a time:

    * ``gym env, batch 1``: a ``gymnasium.Env`` per imagined rollout whose ``step(action)`` runs
      ONE ensemble member on ONE row (numpy in/out) and computes the reward; the policy is
      evaluated per env and step (batch of 1). Envs are stepped one after another.
    * ``vector env per member``: legacy RLlib's ``_VectorizedModelGymEnv``: per member a vector
      env over its own slice of rollouts (200 rows), numpy in/out, the member's network and the
      reward on that slice, the policy batched over the slice; a Python loop over members.

(b) ensemble training samples/s: the batched ``DynamicsEnsemble`` (K x 500 rows per Adam step,
    the step ``fit_ensemble`` takes) against K single-member models trained one after another
    on the same number of samples (``ensemble_size=1`` ensembles, and plain ``nn.Sequential``
    MLPs); plus one ``fit_ensemble`` epoch of K=5 against five K=1 fits.

(c) achieved FLOP/s of imagination (model + policy matmul FLOPs, 2*in*out per layer per row)
    as a fraction of a tight loop of ``torch.bmm`` over exactly the same shapes.

All variants are interleaved (rotating order) and repeated; tables show medians of paired
per-repetition ratios. Run from the repo root::

    .venv/bin/python benchmarks/bench_core.py            # paper sizes, 1 thread (+ 1-vs-2 table)
    .venv/bin/python benchmarks/bench_core.py --quick    # smoke test (H=50, 2 repetitions)
"""

from __future__ import annotations

import argparse
import time

import _common as C
import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mbmpo_ray.envs import get_env_spec
from mbmpo_ray.imagination import imagine
from mbmpo_ray.meta import GaussianMLPPolicy
from mbmpo_ray.models import DynamicsEnsemble, FitConfig, fit_ensemble, train_step

K = 5  # ensemble members
HIDDEN = (512, 512)  # model hidden sizes (ReLU)
POLICY_HIDDEN = (32, 32)  # policy hidden sizes (tanh)
MODEL_BATCH = 500  # rows per member per gradient step


# ------------------------------------------------------------------------------- gym baselines
def member_layers(ens: DynamicsEnsemble, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight in x out, bias out)`` of member ``k``'s layers (views of the ensemble)."""
    layers = [m for m in ens.net if hasattr(m, "weight")]
    return [(m.weight[k].detach(), m.bias[k, 0].detach()) for m in layers]


class MemberNet:
    """Member ``k`` of the ensemble as a stand-alone network on ``B x I`` rows (same maths as
    :meth:`DynamicsEnsemble.sample_next_obs`, deterministic head)."""

    def __init__(self, ens: DynamicsEnsemble, k: int) -> None:
        self.layers = member_layers(ens, k)
        self.in_mean = ens.input_normalizer.mean.detach()
        self.in_std = ens.input_normalizer.std.detach()
        self.d_mean = ens.delta_normalizer.mean.detach()
        self.d_std = ens.delta_normalizer.std.detach()

    @torch.no_grad()
    def next_obs(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.concatenate([obs, act], axis=-1))
        h = (x - self.in_mean) / self.in_std
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            h = torch.addmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        return obs + torch.addcmul(self.d_mean, h, self.d_std).numpy()


class GymModelEnv(gym.Env):
    """ONE imagined rollout in ONE ensemble member, gym style: ``step`` runs the member on a
    batch of 1 (numpy in, numpy out) and computes reward and termination."""

    def __init__(self, net: MemberNet, spec, low: np.ndarray, high: np.ndarray) -> None:
        self.net = net
        self.reward_fn, self.termination_fn = spec.reward_fn, spec.termination_fn
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (C.OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.state = np.zeros(C.OBS_DIM, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = np.array(options["state"], dtype=np.float32)
        return self.state, {}

    def step(self, action):
        obs = self.state
        act = np.clip(action, self.action_space.low, self.action_space.high)
        nxt = self.net.next_obs(obs[None], act[None])[0]
        reward = float(self.reward_fn(obs, act, nxt))
        terminated = bool(self.termination_fn(nxt))
        self.state = nxt
        return nxt, reward, terminated, False, {}


class VectorModelEnv:
    """Legacy RLlib ``_VectorizedModelGymEnv``: one member on its own slice of rollouts."""

    def __init__(self, net: MemberNet, spec, low: np.ndarray, high: np.ndarray) -> None:
        self.net, self.spec, self.low, self.high = net, spec, low, high
        self.cur_obs = np.zeros((0, C.OBS_DIM), np.float32)

    def vector_reset(self, states: np.ndarray) -> list[np.ndarray]:
        self.cur_obs = np.array(states, dtype=np.float32)
        return list(self.cur_obs)

    def vector_step(self, actions: np.ndarray):
        obs = self.cur_obs
        act = np.clip(actions, self.low, self.high)
        nxt = self.net.next_obs(obs, act)
        rew = self.spec.reward_fn(obs, act, nxt)
        done = self.spec.termination_fn(nxt)
        self.cur_obs = nxt
        return list(nxt), list(rew), list(done), [{} for _ in range(len(nxt))]


# ------------------------------------------------------------------------------- helpers
def matmul_shapes(rows_per_member: int, policy: GaussianMLPPolicy) -> list[tuple[int, ...]]:
    """``(batch, rows, in, out)`` of every model and policy matmul of one imagination step."""
    model = [C.OBS_DIM + C.ACT_DIM, *HIDDEN, C.OBS_DIM]
    pol = [C.OBS_DIM - policy.obs_start, *POLICY_HIDDEN, C.ACT_DIM]
    shapes = [(K, rows_per_member, a, b) for a, b in zip(model[:-1], model[1:], strict=True)]
    shapes += [(K, rows_per_member, a, b) for a, b in zip(pol[:-1], pol[1:], strict=True)]
    return shapes


def flops(shapes: list[tuple[int, ...]]) -> int:
    return sum(2 * k * r * i * o for k, r, i, o in shapes)


def fmt_rate(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.1f} G"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


# ------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke test: H=50, 2 repetitions")
    size.add_argument("--full", action="store_true", help="7 repetitions, longer baselines")
    ap.add_argument(
        "--threads", default="1",
        help="torch thread counts for the main tables, e.g. 1,2 (default 1: on the shared "
        "machine 2 threads is several times slower; each extra count adds minutes)",
    )
    ap.add_argument(
        "--compare-threads", default="1,2",
        help="thread counts of the short 1-vs-2-threads comparison ('' to skip)",
    )
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5)")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()

    load_before = C.load_average()
    threads = [int(t) for t in args.threads.split(",")]
    cmp_threads = [int(t) for t in args.compare_threads.split(",") if t.strip()]
    reps = args.reps or (2 if args.quick else 7 if args.full else 5)
    horizon = 50 if args.quick else 200
    rollouts = 1000  # B, 200 per member
    per_member = rollouts // K
    gym_steps = 3 if args.quick else 20 if args.full else 10  # the batch-1 baseline is slow
    vec_steps = 20 if args.quick else horizon if args.full else 50
    grad_steps = 5 if args.quick else 20  # (b) Adam steps per variant
    bmm_passes = 50

    torch.manual_seed(0)
    spec = get_env_spec(C.ENV_ID)
    t_setup = time.perf_counter()
    torch.set_num_threads(threads[0])
    data = C.collect_halfcheetah(num_episodes=50)
    ens = C.fitted_ensemble(data, epochs=1 if args.quick else 3, hidden=HIDDEN, k=K)
    print(f"setup: {data['source']}, ensemble fitted ({time.perf_counter() - t_setup:.1f} s)")
    low, high = data["low"], data["high"]
    low_t, high_t = torch.as_tensor(low), torch.as_tensor(high)

    policy = GaussianMLPPolicy(
        C.OBS_DIM, C.ACT_DIM, POLICY_HIDDEN, "tanh", obs_start=spec.policy_obs_start
    )
    params = policy.init_params(torch.Generator().manual_seed(0))
    task_params = policy.expand_params(params, K)  # T = K tasks, one per member
    rng = np.random.default_rng(0)
    start_np = data["obs"][rng.integers(len(data["obs"]), size=rollouts)]
    start = torch.from_numpy(start_np).reshape(K, per_member, C.OBS_DIM)

    # ---------------- (a) variants
    def run_imagine(steps: int = horizon):
        gen = torch.Generator().manual_seed(1)
        return imagine(
            ens,
            lambda obs, g: policy.sample(task_params, obs, g, batched=True),
            start,
            steps,
            spec.reward_fn,
            spec.termination_fn,
            action_low=low_t,
            action_high=high_t,
            generator=gen,
            deterministic_model=True,
        )

    def run_imagine_bf16(steps: int = horizon):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run_imagine(steps)

    nets = [MemberNet(ens, k) for k in range(K)]
    # member-major, like the tasks of imagine
    gym_envs = [GymModelEnv(nets[i // per_member], spec, low, high) for i in range(rollouts)]
    vec_envs = [VectorModelEnv(nets[k], spec, low, high) for k in range(K)]

    # sanity check: the baselines' member networks compute what the ensemble computes
    with torch.no_grad():
        act = torch.rand(K, per_member, C.ACT_DIM) * 2 - 1
        ref = ens.sample_next_obs(start, act)
        mine = np.stack([nets[k].next_obs(start[k].numpy(), act[k].numpy()) for k in range(K)])
        err = float(np.abs(mine - ref.numpy()).max() / (1.0 + ref.abs().max()))
        assert err < 1e-4, f"baseline member network differs from the ensemble: {err}"

    @torch.no_grad()
    def run_gym(steps: int = gym_steps):
        gen = torch.Generator().manual_seed(1)
        for env, s in zip(gym_envs, start_np, strict=True):
            env.reset(options={"state": s})
        trajectory = []
        for _ in range(steps):
            for env in gym_envs:
                obs_t = torch.from_numpy(env.state)[None]
                act, logp = policy.sample(params, obs_t, gen)
                act_np = act[0].numpy()
                _, rew, term, _, _ = env.step(act_np)
                trajectory.append((act_np, rew, term, float(logp[0])))
        return trajectory

    @torch.no_grad()
    def run_vec(steps: int = vec_steps):
        gen = torch.Generator().manual_seed(1)
        obs = [
            env.vector_reset(start_np[k * per_member : (k + 1) * per_member])
            for k, env in enumerate(vec_envs)
        ]
        trajectory = []
        for _ in range(steps):
            for k, env in enumerate(vec_envs):
                act, logp = policy.sample(params, torch.from_numpy(np.stack(obs[k])), gen)
                obs[k], rew, done, _ = env.vector_step(act.numpy())
                trajectory.append((rew, done, logp.numpy()))
        return trajectory

    # ---------------- (c) bmm reference over exactly the matmul shapes of one imagination step
    shapes = matmul_shapes(per_member, policy)
    flops_per_step = flops(shapes)
    mats = {
        dt: [(torch.randn(k, r, i).to(dt), torch.randn(k, i, o).to(dt)) for k, r, i, o in shapes]
        for dt in (torch.float32, torch.bfloat16)
    }

    def run_bmm(dtype=torch.float32, passes: int = bmm_passes):
        pairs = mats[dtype]
        for _ in range(passes):
            for x, w in pairs:
                torch.bmm(x, w)

    # ---------------- (b) training variants (normalised rows, as fit_ensemble trains)
    x_all = torch.from_numpy(np.concatenate([data["obs"], data["act"]], axis=1))
    y_all = torch.from_numpy(data["next_obs"] - data["obs"])
    x_all = ens.input_normalizer.normalize(x_all).detach()
    y_all = ens.delta_normalizer.normalize(y_all).detach()
    n_rows = x_all.shape[0]
    rows = torch.randint(n_rows, (grad_steps, K, MODEL_BATCH), generator=torch.Generator())

    batched = DynamicsEnsemble(C.OBS_DIM, C.ACT_DIM, K, HIDDEN)
    batched_opt = torch.optim.Adam(batched.parameters(), lr=1e-3)
    singles = [DynamicsEnsemble(C.OBS_DIM, C.ACT_DIM, 1, HIDDEN) for _ in range(K)]
    single_opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in singles]
    widths = [C.OBS_DIM + C.ACT_DIM, *HIDDEN, C.OBS_DIM]
    plains = []
    for _ in range(K):
        layers: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers += [nn.Linear(w_in, w_out)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
        plains.append(nn.Sequential(*layers))
    plain_opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in plains]

    def ens_step(model, opt, idx):  # the step fit_ensemble takes, on K x MODEL_BATCH rows
        train_step(model, opt, x_all[idx], y_all[idx])

    def train_batched(steps: int = grad_steps):
        for s in range(steps):
            ens_step(batched, batched_opt, rows[s])

    def train_batched_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            train_batched()

    def train_singles():
        for k in range(K):
            for s in range(grad_steps):
                ens_step(singles[k], single_opts[k], rows[s, k : k + 1])

    def train_plain():
        for k in range(K):
            for s in range(grad_steps):
                idx = rows[s, k]
                loss = F.mse_loss(plains[k](x_all[idx]), y_all[idx])
                plain_opts[k].zero_grad(set_to_none=True)
                loss.backward()
                plain_opts[k].step()

    fit_cfg = FitConfig(model_max_epochs=1, model_batch_size=MODEL_BATCH)
    fit_batched_model = DynamicsEnsemble(C.OBS_DIM, C.ACT_DIM, K, HIDDEN)
    fit_single_models = [DynamicsEnsemble(C.OBS_DIM, C.ACT_DIM, 1, HIDDEN) for _ in range(K)]
    n_train = n_rows - fit_cfg.holdout_size(n_rows)

    def fit_batched():
        fit_ensemble(fit_batched_model, data["obs"], data["act"], data["next_obs"], fit_cfg,
                     generator=torch.Generator().manual_seed(2))

    def fit_singles():
        for m in fit_single_models:
            fit_ensemble(m, data["obs"], data["act"], data["next_obs"], fit_cfg,
                         generator=torch.Generator().manual_seed(2))

    # ---------------- measure
    def with_threads(nt, fn, *fargs):
        def run():
            torch.set_num_threads(nt)
            return fn(*fargs)
        return run

    # cheap warm-ups (allocator, oneDNN kernels); then timed, interleaved repetitions
    for nt in sorted(set(threads) | set(cmp_threads)):
        torch.set_num_threads(nt)
        run_imagine(3)
        run_imagine_bf16(3)
        run_gym(1)
        run_vec(1)
        run_bmm(passes=2)
        run_bmm(torch.bfloat16, passes=2)
        train_batched(2)
        train_batched_bf16()
    train_singles()
    train_plain()

    group_a, group_b, group_t = {}, {}, {}
    for nt in threads:
        group_a |= {
            (nt, "imagine"): with_threads(nt, run_imagine),
            (nt, "gym1"): with_threads(nt, run_gym),
            (nt, "vec"): with_threads(nt, run_vec),
            (nt, "bmm"): with_threads(nt, run_bmm),
            (nt, "imagine_bf16"): with_threads(nt, run_imagine_bf16),
            (nt, "bmm_bf16"): with_threads(nt, run_bmm, torch.bfloat16),
        }
        group_b |= {
            (nt, "batched"): with_threads(nt, train_batched),
            (nt, "singles"): with_threads(nt, train_singles),
            (nt, "plain"): with_threads(nt, train_plain),
            (nt, "batched_bf16"): with_threads(nt, train_batched_bf16),
            (nt, "fit_batched"): with_threads(nt, fit_batched),
            (nt, "fit_singles"): with_threads(nt, fit_singles),
            (nt, "bmm"): with_threads(nt, run_bmm),  # FLOP/s reference paired within (b)
        }
    cmp_h, cmp_passes, cmp_steps = max(horizon // 10, 5), 10, 3
    for nt in cmp_threads:  # short versions: 2 threads can be ~10x slower on a busy machine
        group_t |= {
            (nt, "imagine"): with_threads(nt, run_imagine, cmp_h),
            (nt, "bmm"): with_threads(nt, run_bmm, torch.float32, cmp_passes),
            (nt, "train"): with_threads(nt, train_batched, cmp_steps),
        }
    timings = {}
    for label, group in (("(a)/(c)", group_a), ("(b)", group_b), ("threads", group_t)):
        t0 = time.perf_counter()
        timings[label] = C.interleaved(group, reps, warmup=False) if group else {}
        print(f"{label} measured in {time.perf_counter() - t0:.0f} s")
    ta, tb, tt = timings["(a)/(c)"], timings["(b)"], timings["threads"]

    # bf16 rollouts vs fp32: how far do the imagined returns move?
    torch.set_num_threads(threads[0])
    ret32 = run_imagine().returns()
    ret16 = run_imagine_bf16().returns()
    bf16_dev = float(((ret16 - ret32).abs() / ret32.abs().clamp_min(1.0)).median())

    # ---------------- tables
    n_imag = rollouts * horizon
    n_gym = rollouts * gym_steps
    n_vec = rollouts * vec_steps
    n_grad = K * grad_steps * MODEL_BATCH
    n_fit = K * n_train

    def rate(tab, nt, name, n):
        return fmt_rate(C.median([n / t for t in tab[(nt, name)]]))

    def paired(tab, nt, num_name, num_n, den_name, den_n):
        """Median over repetitions of rate(num) / rate(den), and its min-max."""
        rs = [(num_n / a) / (den_n / b)
              for a, b in zip(tab[(nt, num_name)], tab[(nt, den_name)], strict=True)]
        return C.median(rs), C.spread(rs)

    rows_a, rows_b, rows_c, verdicts = [], [], [], []
    for nt in threads:
        sp_gym, sp_gym_rng = paired(ta, nt, "imagine", n_imag, "gym1", n_gym)
        sp_vec, sp_vec_rng = paired(ta, nt, "imagine", n_imag, "vec", n_vec)
        bf, bf_rng = paired(ta, nt, "imagine_bf16", n_imag, "imagine", n_imag)
        rows_a += [
            [nt, "`imagine` (batched, K x 200 rows per step)", f"{n_imag:,}",
             rate(ta, nt, "imagine", n_imag), "1 (reference)"],
            [nt, "gym env per rollout, batch of 1", f"{n_gym:,} ({gym_steps} steps)",
             rate(ta, nt, "gym1", n_gym), f"**{sp_gym:.1f}x** ({sp_gym_rng})"],
            [nt, "vector env per member (200-row slice, legacy RLlib)",
             f"{n_vec:,} ({vec_steps} steps)", rate(ta, nt, "vec", n_vec),
             f"**{sp_vec:.2f}x** ({sp_vec_rng})"],
            [nt, "what-if: `imagine` under bf16 autocast", f"{n_imag:,}",
             rate(ta, nt, "imagine_bf16", n_imag),
             f"{1 / bf:.2f}x, i.e. bf16 is {bf:.2f}x faster ({bf_rng})"],
        ]
        verdicts.append(
            f"- (a) threads={nt}: `imagine` is {sp_gym:.1f}x the gym env stepped with a batch of "
            f"1, target >= 20x **{C.verdict(sp_gym >= 20)}**; against the per-member vector env "
            f"(legacy RLlib) it is {sp_vec:.2f}x"
            + ("." if sp_vec >= 20 else ", i.e. the 20x target does NOT hold against that "
               "baseline.")
        )
        # (c)
        fl_imag, fl_bmm = flops_per_step * horizon, flops_per_step * bmm_passes
        fr = [(fl_imag / a) / (fl_bmm / b)
              for a, b in zip(ta[(nt, "imagine")], ta[(nt, "bmm")], strict=True)]
        ach = C.median([fl_imag / t for t in ta[(nt, "imagine")]])
        ref = C.median([fl_bmm / t for t in ta[(nt, "bmm")]])
        ref16 = C.median([fl_bmm / t for t in ta[(nt, "bmm_bf16")]])
        bf16_gain = C.median_ratio(ta[(nt, "bmm")], ta[(nt, "bmm_bf16")])
        rows_c.append([nt, f"{fmt_rate(ach)}FLOP/s", f"{fmt_rate(ref)}FLOP/s",
                       f"**{C.median(fr):.0%}** ({min(fr):.0%}-{max(fr):.0%})",
                       f"{fmt_rate(ref16)}FLOP/s ({bf16_gain:.1f}x fp32 bmm)"])
        verdicts.append(
            f"- (c) threads={nt}: imagination runs at {C.median(fr):.0%} of the same-shape "
            f"`torch.bmm` FLOP/s, target >= 50% **{C.verdict(C.median(fr) >= 0.5)}**."
        )
        # (b)
        sp_s, sp_s_rng = paired(tb, nt, "batched", n_grad, "singles", n_grad)
        sp_p, sp_p_rng = paired(tb, nt, "batched", n_grad, "plain", n_grad)
        sp_16, sp_16_rng = paired(tb, nt, "batched_bf16", n_grad, "singles", n_grad)
        sp_f, sp_f_rng = paired(tb, nt, "fit_batched", n_fit, "fit_singles", n_fit)
        train_flops = 3 * flops(matmul_shapes(MODEL_BATCH, policy)[:3]) / (K * MODEL_BATCH)
        train_fr = C.median([(n_grad * train_flops / a) / (fl_bmm / b) for a, b in
                             zip(tb[(nt, "batched")], tb[(nt, "bmm")], strict=True)])
        rows_b += [
            [nt, f"batched ensemble, {grad_steps} Adam steps of K x {MODEL_BATCH} rows",
             f"{n_grad:,}", rate(tb, nt, "batched", n_grad), "1 (reference)"],
            [nt, f"{K} x `DynamicsEnsemble(ensemble_size=1)`, one after another", f"{n_grad:,}",
             rate(tb, nt, "singles", n_grad), f"**{sp_s:.2f}x** ({sp_s_rng})"],
            [nt, f"{K} x plain `nn.Sequential` MLP, one after another", f"{n_grad:,}",
             rate(tb, nt, "plain", n_grad), f"**{sp_p:.2f}x** ({sp_p_rng})"],
            [nt, "what-if: batched ensemble under bf16 autocast", f"{n_grad:,}",
             rate(tb, nt, "batched_bf16", n_grad),
             f"{sp_16:.2f}x over the K=1 models ({sp_16_rng})"],
            [nt, f"`fit_ensemble`, 1 epoch, K={K}", f"{n_fit:,}", rate(tb, nt, "fit_batched",
             n_fit), "1 (reference)"],
            [nt, f"`fit_ensemble`, 1 epoch, {K} x K=1 one after another", f"{n_fit:,}",
             rate(tb, nt, "fit_singles", n_fit), f"**{sp_f:.2f}x** ({sp_f_rng})"],
        ]
        verdicts.append(
            f"- (b) threads={nt}: batched ensemble training is {sp_s:.2f}x {K} separate K=1 "
            f"ensembles, {sp_p:.2f}x plain MLPs and {sp_f:.2f}x for a whole `fit_ensemble` "
            f"epoch; target >= 3x **{C.verdict(min(sp_s, sp_p) >= 3)}**. The batched step runs at "
            f"{train_fr:.0%} of the same-run bmm FLOP/s (forward + backward = 3x forward FLOPs)."
        )
    rows_t = []
    for nt in cmp_threads:
        base = cmp_threads[0]
        cells = [nt]
        for name in ("imagine", "bmm", "train"):
            r = [a / b for a, b in zip(tt[(nt, name)], tt[(base, name)], strict=True)]
            cells.append(f"{C.median(r):.2f} ({C.spread(r)})")
        rows_t.append(cells)

    sizes = (
        f"K = {K} members of {HIDDEN} ReLU; B = {rollouts} imagined rollouts ({per_member} per "
        f"member, T = {K} tasks); H = {horizon}; {C.ENV_ID} obs {C.OBS_DIM} (x kept) / act "
        f"{C.ACT_DIM}; policy {POLICY_HIDDEN} tanh; deterministic model; {reps} interleaved "
        f"repetitions; start states and normalisers from {data['source']}."
    )
    head_a = ["threads", "variant", "transitions timed", "transitions/s (median)",
              "speed-up of `imagine` (median of paired ratios, min-max)"]
    head_b = ["threads", "variant", "samples", "samples/s (median)",
              "speed-up of the batched ensemble (median, min-max)"]
    head_c = ["threads", "imagination (achieved)", "`torch.bmm`, same shapes, tight loop",
              "fraction (median, min-max)", "what-if: bf16 `torch.bmm`, same shapes"]
    head_t = ["threads", f"`imagine` (H={cmp_h})", f"same-shape bmm ({cmp_passes} passes)",
              f"batched training ({cmp_steps} steps)"]
    body = [
        *C.header_lines(threads, load_before),
        f"- Sizes: {sizes}",
        f"- FLOPs per imagined transition: {flops_per_step // rollouts:,} "
        "(model 2*(24*512 + 512*512 + 512*18) + policy 2*(17*32 + 32*32 + 32*6)).",
        "",
        "### (a) Imagined transitions/s",
        "",
        C.markdown_table(head_a, rows_a),
        "",
        "Baselines step one model env at a time: *gym env per rollout, batch of 1* is a "
        "`gymnasium.Env` per imagined rollout whose `step` runs one member on one row (numpy "
        "in/out) and computes the reward, with the policy evaluated per env and step; *vector "
        "env per member* is legacy RLlib's `_VectorizedModelGymEnv` (one member on its own "
        "200-row slice, numpy in/out, policy batched over the slice, Python loop over members). "
        "Baselines run fewer steps than H; all rates are per transition. bf16 what-if: median "
        f"relative change of the per-rollout imagined return vs fp32: {bf16_dev:.2%}.",
        "",
        "### (b) Ensemble training samples/s",
        "",
        C.markdown_table(head_b, rows_b),
        "",
        "### (c) Imagination FLOP/s vs this machine's batched matmul",
        "",
        C.markdown_table(head_c, rows_c),
        "",
    ]
    if rows_t:
        body += [
            f"### Threads: wall time relative to {cmp_threads[0]} thread(s) (> 1 = slower)",
            "",
            C.markdown_table(head_t, rows_t),
            "",
        ]
    body += ["### Targets", "", *verdicts]
    text = "\n".join(body)
    print()
    print(text)
    if not args.no_write:
        C.update_section("bench_core", "Core kernels (`benchmarks/bench_core.py`)", text)
        print(f"\nupdated {C.BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
