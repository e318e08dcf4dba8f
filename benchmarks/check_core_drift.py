"""Do the core maths still compute what an older commit computed? (fixed seeds, bit for bit)

Runs one probe in this checkout and in a git worktree of ``--against`` (same virtual
environment, same machine) and compares the printed numbers exactly: the ensemble fit
(``fit_ensemble`` on 3,000 random HalfCheetah-v5 transitions: per-member validation MSE and
the loss history) and three meta steps (``imagine`` + ``meta_step``: imagined returns before and
after adaptation, KL, a checksum of the policy parameters). Identical output means a learning
difference between runs of the two commits comes from elsewhere (the Ray glue, real sampling,
run-to-run spread), not from the fit, the imagination or the meta-policy update.

    .venv/bin/python benchmarks/check_core_drift.py --against 7dde31d   # ~1 min

Both probes run with ``MKL_CBWR=AVX2`` (unless set otherwise): on AVX-512 CPUs MKL's float32
kernels may round differently with the memory alignment of their operands, so an unrelated
change (another module imported, another allocation) moved the meta step's KL in its 8th
digit (2026-11-24, an AVX512-BF16 EPYC); MKL's reproducible mode makes the check exact again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Written against the API both sides share (the field names of FitConfig / MetaConfig changed
# once: ``max_epochs`` -> ``model_max_epochs``, ``alpha`` -> ``inner_lr``).
PROBE = r'''
import dataclasses
import gymnasium as gym
import numpy as np
import torch
import mbmpo_ray.meta as M
from mbmpo_ray.envs import get_env_spec
from mbmpo_ray.imagination import imagine
from mbmpo_ray.meta.policy import GaussianMLPPolicy
from mbmpo_ray.models import training as T
from mbmpo_ray.models.ensemble import DynamicsEnsemble

torch.set_num_threads(1)
env = gym.make("HalfCheetah-v5")
rng = np.random.default_rng(0)
o, _ = env.reset(seed=0)
O, A, N = [], [], []
for t in range(3000):
    a = rng.uniform(-1, 1, 6).astype(np.float32)
    n = env.step(a)[0]
    O.append(o); A.append(a); N.append(n); o = n
    if (t + 1) % 200 == 0:
        o, _ = env.reset()
O, A, N = (np.asarray(x, np.float32) for x in (O, A, N))
torch.manual_seed(0)
ens = DynamicsEnsemble(17, 6, 5, (128, 128), "relu", False)
fields = {f.name for f in dataclasses.fields(T.FitConfig)}
fit_cfg = T.FitConfig(**{("model_max_epochs" if "model_max_epochs" in fields else "max_epochs"): 5})
res, _ = T.fit_ensemble(ens, O, A, N, fit_cfg, generator=torch.Generator().manual_seed(0),
                        row_ids=np.arange(len(O)))
print("fit val", res.val_loss.tolist(), "epochs", res.epochs.tolist())
print("fit history", np.asarray(res.history).tolist())
spec = get_env_spec("HalfCheetah-v5")
pol = GaussianMLPPolicy(17, 6)
params = pol.init_params(torch.Generator().manual_seed(1))
g = torch.Generator().manual_seed(2)
start = torch.as_tensor(O)

def sample_fn(task_params, generator=None):
    idx = torch.randint(len(start), (5, 20), generator=g)
    return imagine(ens, lambda obs, gg: pol.sample(task_params, obs, gg, batched=True),
                   start[idx], 50, spec.reward_fn, spec.termination_fn, action_low=-1.0,
                   action_high=1.0, generator=g)

fields = {f.name for f in dataclasses.fields(M.MetaConfig)}
meta_cfg = M.MetaConfig(num_tasks=5, **{("inner_lr" if "inner_lr" in fields else "alpha"): 1e-3})
for step in range(3):
    params, d = M.meta_step(pol, params, sample_fn, meta_cfg, ensemble_size=5)
    print("meta step", step, repr(float(d["pre_return_mean"])), repr(float(d["post_return_mean"])),
          repr(float(d["kl_after"])), repr(float(sum(p.double().sum() for p in params.values()))))
'''


def probe(source: Path) -> list[str]:
    """The probe's output lines with ``source`` first on the import path."""
    env = {"MKL_CBWR": "AVX2", **os.environ, "PYTHONPATH": str(source)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=source, env=env, text=True,
                         capture_output=True)
    if out.returncode != 0:
        sys.exit(f"the probe failed in {source}:\n{out.stderr[-2000:]}")
    return out.stdout.splitlines()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", required=True, metavar="REV", help="git commit to compare with")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "old"
        add = subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.against],
                             cwd=REPO_ROOT, capture_output=True, text=True)
        if add.returncode != 0:
            sys.exit(f"cannot check out {args.against!r}: {add.stderr.strip()}")
        try:
            old = probe(tree)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT)
    new = probe(REPO_ROOT)
    same = old == new
    for a, b in zip(old, new, strict=False):
        print(("  " if a == b else "! ") + b + ("" if a == b else f"\n  was: {a}"))
    print(f"{'identical' if same else 'DIFFERENT'}: this checkout vs {args.against} "
          f"({len(new)} lines)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
