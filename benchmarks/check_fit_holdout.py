"""One-off check of issue 11's model-fit gap: how many epochs our MBPO refit runs with its fixed
holdout (``model_holdout_split='fixed'``: rows held out by row id, never trained on) against a
fresh random split at every refit (``'per_fit'``), as mbrl-lib does. Otherwise the settings of
``bench_mbpo.py`` (mbrl-lib's HalfCheetah), ours only, 5,000 + 500 real steps per mode, one mode
after the other in this process' children::

    .venv/bin/python benchmarks/check_fit_holdout.py

Prints, per mode, the epochs and seconds per refit in the window and the first fit's epochs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(mode: str) -> None:
    import bench_mbpo

    bench_mbpo.MBRL_LIB_SETTINGS = {**bench_mbpo.MBRL_LIB_SETTINGS, "model_holdout_split": mode}
    with tempfile.TemporaryDirectory() as tmp:
        args = argparse.Namespace(real_steps=500, threads=2, block=10, seed=0, device="cpu",
                                  out_csv=Path(tmp) / "ours.csv")
        out = bench_mbpo.run_ours(args)
    w = out["window"]
    print(f"{mode}: {w['epochs_per_model_fit']:.1f} epochs and {w['s_per_model_fit']:.1f} s per "
          f"refit in the window; first fit {out['excluded']['first_iteration']['model_epochs']:.1f}"
          " epochs", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(sys.argv[1])
    else:
        for mode in ("per_fit", "fixed"):
            subprocess.run([sys.executable, __file__, mode], check=True)
