"""mbrl-lib 0.2.0's model refit on given transitions, timed: the peer row of
``benchmarks/bench_fit_speed.py`` (issue 30: "the model fit at mbrl-lib's speed or better per
refit, same epochs").

What mbrl-lib's MBPO does at every refit (``mbrl.util.common.train_model_and_save_model_and_data``
without the save): bootstrap iterators over the replay buffer (``validation_ratio`` 0.2 held out,
batch 256, one bootstrap resample per member), the normaliser update, then
``ModelTrainer.train`` -- here for exactly ``--epochs`` epochs (``patience`` above it, so no
early stop), on a fresh model each repetition, like the "fused Adam" row of the caller. Model
and trainer are built from mbrl-lib's own HalfCheetah MBPO config (``mbrl_mbpo_timing.build_cfg``:
7 Gaussian members of 4 x 200 SiLU, learned rewards, lr 1e-3, weight decay 1e-5).

Input: an ``.npz`` with ``obs`` (``N x 18``, the x position first, as the harness stores it),
``act`` and ``next_obs``. mbrl-lib sees the standard 17-dim observation (x dropped) and, as its
learned reward target, HalfCheetah's reward recomputed from the x positions (forward velocity
``dx / 0.05`` minus ``0.1 |a|^2``). Output: JSON on stdout, ``{"seconds": [...], ...}`` with the
CPU seconds of the calling thread per refit (the first, a warm-up, not included).

Run in the mbrl-lib venv (setup: ``mbrl_mbpo_timing.py``)::

    ~/mbrl-venv/bin/python benchmarks/peers/mbrl_fit_timing.py --data rows.npz --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import mbrl
    import mbrl.models
    import mbrl.util.common as common

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mbrl_mbpo_timing import build_cfg

    d = np.load(args.data)
    obs, act, nxt = d["obs"][:, 1:], d["act"], d["next_obs"][:, 1:]
    reward = (d["next_obs"][:, 0] - d["obs"][:, 0]) / 0.05 - 0.1 * np.square(act).sum(axis=1)
    n = len(obs)
    cfg = build_cfg(1000, args.seed)
    cfg.overrides.num_epochs_train_model = args.epochs
    cfg.overrides.patience = args.epochs + 1
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    def refit() -> float:
        model = common.create_one_dim_tr_model(cfg, obs.shape[1:], act.shape[1:])
        buffer = common.create_replay_buffer(cfg, obs.shape[1:], act.shape[1:], rng=rng)
        buffer.add_batch(obs, act, nxt, reward.astype(np.float32), np.zeros(n, bool),
                         np.zeros(n, bool))
        trainer = mbrl.models.ModelTrainer(model, optim_lr=cfg.overrides.model_lr,
                                           weight_decay=cfg.overrides.model_wd)
        t0 = time.thread_time()
        common.train_model_and_save_model_and_data(model, trainer, cfg.overrides, buffer)
        return time.thread_time() - t0

    refit()  # warm-up
    seconds = [refit() for _ in range(args.reps)]
    print(json.dumps({"seconds": seconds, "rows": n, "epochs": args.epochs,
                      "threads": args.threads, "mbrl": mbrl.__version__,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
