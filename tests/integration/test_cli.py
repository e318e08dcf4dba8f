"""The mbmpo-ray CLI end to end on tiny configs."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mbmpo_ray.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_bad_arguments_give_usage_not_traceback(capsys):
    assert main(["train", "--config", "nosuchenv", "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert "usage: mbmpo-ray" in err and "unknown config 'nosuchenv'" in err
    assert "Traceback" not in err
    assert main(["train", "--config", "pendulum", "--set", "num_tasks=3"]) == 2
    assert "multiple of ensemble_size" in capsys.readouterr().err
    assert main(["train", "--config", "pendulum", "--set", "bogus=1"]) == 2
    assert "unknown --set key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--iterations", "notanumber"])
    assert e.value.code == 2


# Bad inputs a new user tries, and the words the one error line must contain. Placeholders:
# {file} an existing file, {run} a directory holding a run, {empty} an empty directory,
# {torn} a checkpoint with a truncated file (its manifest says so), {zero} a checkpoint
# without manifest whose algorithm_state.pkl is 0 bytes, {junk} a directory of other files,
# {badpy} a config file with a syntax error, {noenv} a config file without ENV, {out} a fresh
# output directory.
P = ["train", "--config", "pendulum", "--variant", "smoke"]
BAD_INPUTS = [
    # train: configs and settings
    ("unknown config", ["train", "--config", "nosuchenv", "--iterations", "1"],
     "unknown config 'nosuchenv'"),
    ("unknown env id", ["train", "--env", "NoSuchEnv-v0", "--iterations", "1"],
     "--env NoSuchEnv-v0 is not a gymnasium env id"),
    ("gymnasium env without model functions", ["train", "--env", "CartPole-v1"],
     "mbmpo_ray.envs.register_model_functions"),
    ("env without model functions", [*P, "--env", "MountainCarContinuous-v0"],
     "register_model_functions"),
    ("no config", ["train", "--iterations", "1"], "give --config"),
    ("unknown variant", ["train", "--config", "pendulum", "--variant", "huge"], "no variant"),
    ("missing config file", ["train", "--config", "{file}.py"], "does not exist"),
    ("config file with syntax error", ["train", "--config", "{badpy}"], "SyntaxError"),
    ("config file without ENV", ["train", "--config", "{noenv}"], "cannot load config"),
    ("--set not a number", [*P, "--set", "ensemble_size=abc"], "ensemble_size must be"),
    ("--set float for int", [*P, "--set", "horizon=2.5"], "horizon must be an integer"),
    ("--set bad activation", [*P, "--set", "model_activation=foo"], "model_activation"),
    ("--set bad choice", [*P, "--set", "outer_optimizer=adam"], "outer_optimizer"),
    ("--set tasks not multiple of K", [*P, "--set", "num_tasks=3"],
     "multiple of ensemble_size"),
    ("--set more trainers than models", [*P, "--set", "num_model_trainers=3"],
     "num_model_trainers"),
    ("--set negative lr", [*P, "--set", "inner_lr=-0.1"], "inner_lr"),
    ("--set zero models", [*P, "--set", "ensemble_size=0"], "ensemble_size"),
    ("--set bad hidden sizes", [*P, "--set", "model_hidden_sizes=(0,32)"],
     "model_hidden_sizes"),
    ("--set bool as word", [*P, "--set", "first_order=maybe"], "first_order"),
    ("--set holdout ratio > 1", [*P, "--set", "model_holdout_ratio=1.5"],
     "model_holdout_ratio"),
    ("--set empty value", [*P, "--set", "horizon="], "horizon"),
    ("--set unknown key", [*P, "--set", "bogus=1"], "unknown --set key bogus"),
    ("--set typo", [*P, "--set", "horizn=5"], "did you mean horizon"),
    ("--set RLlib key", [*P, "--set", "num_env_runners=2"], "use --num-env-runners"),
    ("--set without =", [*P, "--set", "horizon"], "KEY=VALUE"),
    # train: numbers
    ("--stop-timesteps 0", [*P, "--stop-timesteps", "0"], "--stop-timesteps must be"),
    ("--stop-timesteps negative", [*P, "--stop-timesteps", "-5"], "--stop-timesteps must be"),
    ("--iterations 0", [*P, "--iterations", "0"], "--iterations must be"),
    ("--iterations negative", [*P, "--iterations", "-1"], "--iterations must be"),
    ("--iterations not a number", [*P, "--iterations", "ten"], "invalid int value"),
    ("--num-env-runners negative", [*P, "--num-env-runners", "-1"], "num_env_runners must be"),
    ("--num-learners negative", [*P, "--num-learners", "-1"], "--num-learners must be"),
    # MB-MPO's smoke config has 2 tasks: its config refuses 8 learners before the CPU check
    ("more learners than CPUs or tasks", [*P, "--iterations", "1", "--num-learners", "8",
                                          "--output", "{out}"], "learners"),
    ("--seed negative", [*P, "--seed", "-1"], "seed must be"),
    ("--checkpoint-every negative", [*P, "--checkpoint-every", "-1"],
     "--checkpoint-every must be"),
    ("--keep-checkpoints 0", [*P, "--keep-checkpoints", "0"], "--keep-checkpoints must be"),
    ("unknown option", [*P, "--epochs", "3"], "unrecognized arguments"),
    # train: output directory
    ("unwritable output", [*P, "--iterations", "1", "--output", "/proc/mbmpo_run"],
     "cannot write to --output"),
    ("output is a file", [*P, "--iterations", "1", "--output", "{file}"], "is a file"),
    ("existing run", [*P, "--iterations", "1", "--output", "{run}"],
     "pass --resume to continue it or --overwrite"),
    ("resume with no run", [*P, "--iterations", "1", "--output", "{out}", "--resume"],
     "nothing to resume"),
    ("resume without checkpoint", [*P, "--iterations", "1", "--output", "{run}", "--resume"],
     "no complete checkpoint"),
    ("resume and overwrite", [*P, "--output", "{run}", "--resume", "--overwrite"],
     "give one of them"),
    ("resume without output or config", ["train", "--resume"], "--resume needs --output"),
    ("empty output", [*P, "--iterations", "1", "--output", ""], "--output is empty"),
    ("unreachable address", [*P, "--iterations", "1", "--address", "127.0.0.1:1",
                             "--output", "{out}"],
     "cannot reach a Ray cluster at --address 127.0.0.1:1"),
    ("more env runners than CPUs", [*P, "--iterations", "1", "--num-env-runners", "64",
                                    "--output", "{out}"], "lower --num-env-runners"),
    # evaluate
    ("evaluate missing checkpoint", ["evaluate", "{out}/nope"], "does not exist"),
    ("evaluate empty dir", ["evaluate", "{empty}"], "is empty"),
    ("evaluate torn checkpoint", ["evaluate", "{torn}"], "is incomplete"),
    ("evaluate zero-byte state", ["evaluate", "{zero}"], "is incomplete"),
    ("evaluate not a checkpoint", ["evaluate", "{junk}"], "not an RLlib checkpoint"),
    ("evaluate a file", ["evaluate", "{file}"], "not a directory"),
    ("evaluate run without checkpoint", ["evaluate", "{run}"], "no complete checkpoint"),
    ("evaluate 0 episodes", ["evaluate", "{torn}", "--episodes", "0"], "--episodes must be"),
    ("evaluate bad video type", ["evaluate", "{torn}", "--video", "out.avi"], ".gif or .mp4"),
    ("evaluate bad render mode", ["evaluate", "{torn}", "--video", "a.gif", "--render",
                                  "human"], "rgb_array"),
    # tune
    ("unknown sweep", ["tune", "nosuch"], "unknown sweep"),
    ("tune --seeds 0", ["tune", "smoke", "--seeds", "0"], "--seeds must be"),
    ("tune --iterations 0", ["tune", "smoke", "--iterations", "0"], "--iterations must be"),
    ("tune --max-concurrent 0", ["tune", "smoke", "--max-concurrent", "0"],
     "--max-concurrent must be"),
    ("tune unknown env", ["tune", "smoke", "--env", "nosuch"], "unknown config"),
    ("tune unknown variant", ["tune", "smoke", "--variant", "huge"], "no variant"),
    ("tune unwritable storage", ["tune", "smoke", "--storage", "/proc/mbmpo_tune"],
     "cannot write to --storage"),
    ("tune bad scheduler", ["tune", "smoke", "--scheduler", "pbt"], "invalid choice"),
    # plot and the command itself
    ("plot missing run", ["plot", "{out}/nope"], "nope"),
    ("plot dir without progress", ["plot", "{empty}"], "progress.csv"),
    ("no command", [], "required"),
    ("unknown command", ["fly"], "invalid choice"),
]


# train cases of MB-MPO's own settings; every other train case runs with --algo mbmpo and mbpo
MBMPO_ONLY = {"--set bad choice", "--set tasks not multiple of K", "--set negative lr",
              "--set bool as word"}


def _per_algo(cases):
    """Each ``train`` case once per algorithm (``--algo`` after ``train``), the rest as is."""
    out = []
    for case, argv, expected in cases:
        if argv[:1] != ["train"]:
            out.append((case, argv, expected))
            continue
        for algo in ["mbmpo"] if case in MBMPO_ONLY else ["mbmpo", "mbpo"]:
            out.append((f"{case} [{algo}]", ["train", "--algo", algo, *argv[1:]], expected))
    return out


BAD_INPUTS_PER_ALGO = _per_algo(BAD_INPUTS)


@pytest.fixture
def bad_input_files(tmp_path):
    from mbmpo_ray.algorithm.checkpoints import save_checkpoint

    (tmp_path / "file").write_text("not a directory")
    run = tmp_path / "run"
    run.mkdir()
    (run / "progress.csv").write_text("iteration,real_steps\n1,100\n")
    (tmp_path / "empty").mkdir()

    def fake_save(path):
        os.makedirs(path)
        Path(path, "rllib_checkpoint.json").write_text("{}")
        Path(path, "algorithm_state.pkl").write_bytes(b"x" * 1000)

    torn = save_checkpoint(fake_save, tmp_path / "torn_run", 1)
    state = torn / "algorithm_state.pkl"
    state.write_bytes(state.read_bytes()[:100])
    zero = tmp_path / "zero"
    zero.mkdir()
    (zero / "rllib_checkpoint.json").write_text("{}")
    (zero / "algorithm_state.pkl").write_bytes(b"")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (tmp_path / "bad.py").write_text("ENV = 'Pendulum-v1'\nPAPER = dict(horizon=\n")
    (tmp_path / "noenv.py").write_text("PAPER = dict(horizon=20)\n")
    return {"file": tmp_path / "file", "run": run, "empty": tmp_path / "empty",
            "torn": torn, "zero": zero, "junk": junk, "badpy": tmp_path / "bad.py",
            "noenv": tmp_path / "noenv.py", "out": tmp_path / "fresh"}


def run_main(argv, capsys):
    """Exit code and stderr of ``mbmpo-ray argv`` (in this process)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, argv, expected", BAD_INPUTS_PER_ALGO,
                         ids=[c[0] for c in BAD_INPUTS_PER_ALGO])
def test_every_bad_input_gets_one_clear_line(case, argv, expected, bad_input_files, capsys,
                                             monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # the CPU check's view of this machine
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = [a.format(**bad_input_files) for a in argv]
    code, err = run_main(argv, capsys)
    assert code not in (0, None), f"{case}: accepted"
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ": error: " in ln or ln.startswith("error:")]
    assert len(errors) == 1, err
    assert expected in errors[0], errors[0]
    assert err.lstrip().startswith("usage: mbmpo-ray"), err


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import mbmpo_ray.cli as cli

    def broken(args):
        raise RuntimeError("the object store is full\nsecond line")

    monkeypatch.setattr(cli, "build_config", broken)
    code, err = run_main(["train", "--config", "pendulum"], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "mbmpo-ray train: error: RuntimeError: the object store is full second line "
        "(--debug shows the traceback)"]
    with pytest.raises(RuntimeError, match="object store"):
        main(["train", "--config", "pendulum", "--debug"])
    monkeypatch.undo()
    with pytest.raises(cli.CLIError, match="unknown config"):
        main(["train", "--config", "nosuchenv", "--debug"])


@pytest.mark.usefixtures("ray_local")
def test_resume_of_an_experiment_from_other_settings_says_what_to_do(monkeypatch, tmp_path,
                                                                     capsys):
    """Tune fails to resolve a restored experiment's configs when the settings changed since
    it started (seen after an upgrade): one line that says so and what to do."""
    import mbmpo_ray.tuning as tuning

    class Stale:
        def fit(self):
            raise ValueError("`module` (('__ref_ph', 'e13bb6c8') must be type or string "
                             "(classpath)!")

    monkeypatch.setattr(tuning, "_make_tuner", lambda args, plan: Stale())
    code, err = run_main(["tune", "smoke", "--resume", "--storage", str(tmp_path)], capsys)
    assert code == 1 and "Traceback" not in err
    assert "could not resume" in err and "--name NEW" in err and "__ref_ph" not in err


def test_bad_input_table_is_the_issue_floor():
    assert len(BAD_INPUTS) >= 36


@pytest.mark.usefixtures("ray_local")
def test_train_checkpoint_evaluate_plot(tmp_path, capsys):
    out = tmp_path / "run_seed0"
    assert main(["train", "--config", "pendulum", "--variant", "smoke", "--iterations", "2",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "iter   2" in printed and "real steps" in printed
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert float(rows[-1]["real_steps"]) == 200
    assert (out / "checkpoint" / "algorithm_state.pkl").exists() or any(
        (out / "checkpoint").iterdir())
    assert (out / "learning_curve.png").stat().st_size > 1000

    assert main(["evaluate", str(out / "checkpoint"), "--episodes", "2"]) == 0
    printed = capsys.readouterr().out
    assert "pre-update policy: mean return" in printed and "adapted policies" in printed

    # a short video of the policy (GIF: needs only imageio, which gymnasium installs)
    cheetah = tmp_path / "cheetah"
    assert main(["train", "--config", "halfcheetah", "--variant", "smoke", "--iterations", "1",
                 "--output", str(cheetah)]) == 0
    gif = tmp_path / "cheetah.gif"
    assert main(["evaluate", str(cheetah / "checkpoint"), "--episodes", "1",
                 "--video", str(gif)]) == 0
    import imageio.v2 as imageio

    assert len(imageio.mimread(gif)) == 21  # reset frame + horizon 20
    capsys.readouterr()

    png = tmp_path / "curves.png"
    assert main(["plot", str(out), str(out), "--out", str(png)]) == 0
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 100


def _plan(sweep, **args):
    import argparse

    from mbmpo_ray import tuning

    ns = dict(sweep=sweep, env=None, variant=None, seeds=None, iterations=None,
              max_concurrent=None, storage=None, name=None)
    return tuning.prepare_sweep(argparse.Namespace(**{**ns, **args}))


def test_sweep_trials_are_fitted_to_a_small_local_cluster(tmp_path):
    """HalfCheetah's PAPER run reserves 1 + 5 x 0.4 CPUs: on two cores its Tune trials would
    wait forever for a third. The trainers' share is lowered so one trial fits, the learner
    keeps both cores; a bigger cluster changes nothing; a trial that cannot fit is an error."""
    from mbmpo_ray import MBMPO, tuning

    plan = _plan("model_bias", storage=str(tmp_path))
    assert tuning.fit_trials_to_cluster(plan, 8.0) is None
    assert plan["config"].num_cpus_per_model_trainer == 0.4
    note = tuning.fit_trials_to_cluster(plan, 2.0)
    assert "needs 3 CPUs" in note and "0.4 -> 0.2" in note
    for point in _plan("model_bias", storage=str(tmp_path))["points"]:
        point.update_from_dict({"num_cpus_per_model_trainer":
                                plan["config"].num_cpus_per_model_trainer})
        assert MBMPO.default_resource_request(point).required_resources["CPU"] <= 2.0
        assert point.learner_threads() == min(2, os.cpu_count())
    with pytest.raises(ValueError, match=r"needs 3 CPUs \(1 without its model trainers\) "
                                         "but the Ray cluster has 0.5"):
        tuning.fit_trials_to_cluster(_plan("model_bias", storage=str(tmp_path)), 0.5)


def test_sweep_too_big_for_the_local_cluster_still_runs(tmp_path):
    """End to end: a trial asking for 3 CPUs (driver + 2 model trainers x 1 CPU) on a 2-CPU
    local Ray starts and finishes instead of waiting for resources. Its own Ray, in a child
    process: the session's shared test cluster may still hold a CPU share of an actor an
    earlier test killed (a CI run once waited here for 80 minutes)."""
    script = (
        "import sys, ray, tune_configs.sweeps as s\n"
        "s.SWEEPS['too_big'] = dict(config='pendulum', variant='smoke', "
        "grid={'num_model_trainers': [2]}, seeds=1, iterations=1)\n"
        "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
        "from mbmpo_ray.cli import main\n"
        f"sys.exit(main(['tune', 'too_big', '--storage', {str(tmp_path)!r}]))\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    assert "needs 3 CPUs" in out and "1 -> 0.5" in out
    assert " ok" in out.split("real steps")[-1]


def _tune(storage, *extra):
    return [sys.executable, "-m", "mbmpo_ray", "tune", "smoke", "--storage", str(storage),
            "--max-concurrent", "1", *extra]


def test_sweep_is_resumable_after_interruption(tmp_path):
    """Interrupt a 2-trial sweep after its first trial, then `--resume` finishes the other.
    40 iterations per trial: the second trial, started as the first ends, cannot also finish
    while Tune handles the Ctrl-C (on a fast idle machine a smoke iteration takes 0.13 s, and
    5 of them once did, 2026-11-24)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    iters = 40
    proc = subprocess.Popen(_tune(tmp_path, "--iterations", str(iters)), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = tmp_path / "mbmpo_smoke"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            done = [p for p in exp.glob("MBMPO_*/result.json")
                    if len(p.read_text().splitlines()) >= iters]
            if done:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "sweep finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        interrupted, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = [p for p in exp.glob("MBMPO_*/result.json")
                if len(p.read_text().splitlines()) >= iters]
    assert len(finished) == 1, "expected exactly one finished trial before resuming"
    # Ctrl-C is not success: a non-zero exit, and the unfinished trial is not "ok"
    assert proc.returncode == 130, interrupted[-3000:]
    statuses = [ln.split()[-1] for ln in interrupted.split("real steps")[-1].splitlines()[1:3]]
    assert sorted(statuses) == ["ok", "unfinished"], interrupted[-2000:]
    assert "--resume" in interrupted

    res = subprocess.run(_tune(tmp_path, "--iterations", str(iters), "--resume"), cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming" in res.stdout
    table = res.stdout.split("real steps")[-1]
    assert table.count(" ok") == 2, res.stdout[-2000:]


def test_train_and_evaluate_mbpo(tmp_path):
    """`train --algo mbpo` writes a row per iteration and a checkpoint; `evaluate` restores it
    (the smoke variant stops at 150 real steps, reached in the first iteration: a higher
    --stop-timesteps lets --iterations 2 decide)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "mbpo"
    cli = [sys.executable, "-m", "mbmpo_ray"]
    res = subprocess.run([*cli, "train", "--algo", "mbpo", "--config", "pendulum", "--variant",
                          "smoke", "--iterations", "2", "--stop-timesteps", "1000",
                          "--output", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "MBPO on Pendulum-v1" in res.stdout and "iter   2" in res.stdout
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert rows[0]["return_eval"] and "return_adapted" not in rows[0]  # MBPO's own columns
    assert any((out / "checkpoint").iterdir())

    res = subprocess.run([*cli, "evaluate", str(out), "--episodes", "1"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "policy: mean return" in res.stdout and "adapted" not in res.stdout


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("algo", ["mbmpo", "mbpo"])
def test_resume_with_the_default_relative_output(algo, tmp_path, monkeypatch, capsys):
    """The default output runs/<env id> is relative: `--resume` failed in RLlib's
    restore_from_path (`ArrowInvalid: URI has empty scheme`), and without --output it was
    refused ("--resume needs --output DIR") right after "already holds a run ...; pass
    --resume". The same command with --resume continues the run."""
    monkeypatch.chdir(tmp_path)
    cmd = ["train", "--algo", algo, "--config", "pendulum", "--variant", "smoke",
           "--stop-timesteps", "100000", "--plain"]
    assert main([*cmd, "--iterations", "1"]) == 0
    code, err = run_main([*cmd, "--iterations", "2"], capsys)
    assert code == 2 and "pass --resume" in err
    assert main([*cmd, "--iterations", "2", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "runs" / "Pendulum-v1" / "progress.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    # an explicit relative --output, resumed without restating the options
    assert main(["train", "--output", "runs/Pendulum-v1", "--resume", "--iterations", "3",
                 "--plain"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "runs" / "Pendulum-v1" / "progress.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    assert main(["evaluate", "runs/Pendulum-v1", "--episodes", "1"]) == 0  # relative too


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("algo", ["mbmpo", "mbpo"])
def test_more_env_runners_than_the_ray_cluster_has(algo, tmp_path, monkeypatch, capsys):
    """Checked against the Ray it runs on after ray.init (here the test's 2-CPU Ray on a
    machine that looks bigger): a clear line instead of waiting forever for the actors."""
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    code, err = run_main(["train", "--algo", algo, "--config", "pendulum", "--variant",
                          "smoke", "--iterations", "1", "--num-env-runners", "3",
                          "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "Traceback" not in err
    assert ("need 3 CPUs (3 env runners x 1 CPU) but the local Ray has 2: lower "
            "--num-env-runners (to 2 or less)") in err


def test_ctrl_c_exits_130_and_keeps_the_checkpoint(tmp_path):
    """A Ctrl-C'd `train` exited 0, like a finished one: now 130 (as `tune`), after saving
    the checkpoint and the plot."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mbmpo_ray", "train", "--config", "pendulum", "--variant",
         "smoke", "--iterations", "10000", "--stop-timesteps", "100000000", "--plain",
         "--output", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (out / "progress.csv").exists() and len(
                    (out / "progress.csv").read_text().splitlines()) >= 3:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert (out / "checkpoint").resolve().is_dir()
