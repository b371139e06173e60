"""medqa.training.checkpoints: complete checkpoints, resume, one run per folder."""

import json

import pytest
import torch
from training_runs import tiny_run as _tiny_run

from medqa.config import build_config
from medqa.datasets import load_demo
from medqa.training import train


def test_last_complete_checkpoint_skips_torn_and_corrupt_ones(qwen_dir, tmp_path, capsys):
    from medqa.training import last_complete_checkpoint

    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "run")
    train(cfg, model, tok, load_demo()[:8], progress=False)
    cks = tmp_path / "run" / "checkpoints"
    assert last_complete_checkpoint(cks) == cks / "checkpoint-4"
    damage = {
        "adapter truncated": lambda d: (d / "adapter_model.safetensors").write_bytes(
            (d / "adapter_model.safetensors").read_bytes()[:-100]),
        "optimizer garbled": lambda d: (d / "optimizer.pt").write_bytes(b"\x00garbage" * 50),
        "state missing": lambda d: (d / "trainer_state.json").unlink(),
        "state not json": lambda d: (d / "trainer_state.json").write_text("{not json"),
    }
    import shutil

    pristine = tmp_path / "pristine"
    shutil.copytree(cks / "checkpoint-4", pristine)
    for name, hurt in damage.items():
        shutil.rmtree(cks / "checkpoint-4")
        shutil.copytree(pristine, cks / "checkpoint-4")
        hurt(cks / "checkpoint-4")
        assert last_complete_checkpoint(cks) == cks / "checkpoint-2", name
        assert "skipping incomplete or corrupt checkpoint" in capsys.readouterr().out, name
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_resume_falls_back_past_a_corrupt_checkpoint(qwen_dir, tmp_path):
    from safetensors.torch import load_file

    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "ref")
    train(cfg, model, tok, load_demo()[:8], progress=False)
    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "run", **{"train.max_steps": 4})
    train(cfg, model, tok, load_demo()[:8], progress=False)
    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"torn")
    import shutil

    shutil.rmtree(run / "adapter")
    cfg, model, tok = _tiny_run(qwen_dir, run, **{"train.resume": True})
    summary = train(cfg, model, tok, load_demo()[:8], progress=False)
    assert summary["steps"] == 4
    a = load_file(tmp_path / "ref" / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _train_cmd(qwen_dir, out, steps=24):
    import sys

    return [sys.executable, "-m", "medqa.cli", "train", "--model", str(qwen_dir), "--dataset", "demo",
            "--data.train_size", "48", "--out", str(out), "--train.max_steps", str(steps), "--train.save_steps", "4",
            "--train.batch_size", "4", "--train.grad_accum", "1", "--train.calibration_size", "0",
            "--train.save_total_limit", "50", "--train.logging_steps", "1", "--train.report_to", "[]"]


@pytest.mark.slow
def test_kill_9_at_three_random_points_then_resume_reaches_the_same_adapter(qwen_dir, tmp_path):
    """A real training process is killed (SIGKILL) three times at random points of its run (during steps
    or while a checkpoint is written); each kill loses no completed checkpoint, and `--resume` after the
    last one finishes with an adapter bitwise equal to an uninterrupted run's."""
    import os
    import random
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    from medqa.training.checkpoints import _checkpoint_problem

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_train_cmd(qwen_dir, tmp_path / "ref"), capture_output=True, text=True, timeout=600, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"

    def step_now() -> int:
        if not metrics.is_file():
            return 0
        lines = [x for x in metrics.read_text().splitlines() if '"loss"' in x]
        return json.loads(lines[-1])["step"] if lines else 0

    def complete() -> set:
        cks = run / "checkpoints"
        return {p.name for p in cks.glob("checkpoint-*") if _checkpoint_problem(p) is None} if cks.is_dir() else set()

    # three random steps of the 24, far enough apart (>= 5) that a resumed run, which first repeats the
    # steps after its checkpoint, is never killed on the strength of the previous run's log lines
    t1 = rng.randint(2, 6)
    t2 = rng.randint(t1 + 5, 14)
    targets = [t1, t2, rng.randint(t2 + 5, 21)]
    kills = []
    for k, target in enumerate(targets):
        cmd = _train_cmd(qwen_dir, run) + (["--resume"] if k else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 300
        while time.time() < deadline and step_now() < target and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # and a random moment inside the step (or its checkpoint)
        before = complete()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(step_now())
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: the run ended before kill {k + 1}"
        assert before <= complete(), f"seed {seed}: a completed checkpoint was lost"
        every = {p.name for p in (run / "checkpoints").glob("checkpoint-*")} if (run / "checkpoints").is_dir() else set()
        assert every == complete(), f"seed {seed}: a checkpoint folder is incomplete (saving is not atomic)"
    assert not (run / "adapter").exists()
    resumed = subprocess.run(_train_cmd(qwen_dir, run) + ["--resume"], capture_output=True, text=True, timeout=600,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    a = load_file(tmp_path / "ref" / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"seed {seed}, kills at steps {kills}: {key} differs"
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if "loss" in json.loads(x)]
    assert steps == list(range(1, 25)), f"seed {seed}"  # every step logged once, none lost, none twice


@pytest.mark.slow
def test_full_disk_is_a_clear_error_and_keeps_earlier_outputs(qwen_dir, tmp_path):
    """The output directory is a small tmpfs (or, where mounting is not allowed, a file-size limit):
    a run that runs out of space stops with one clear line; a finished run beside it is untouched, no
    half-written file stands where a complete one is expected, and `--resume` finishes once there is room."""
    import hashlib
    import os
    import resource
    import signal
    import subprocess

    from medqa.training import last_complete_checkpoint

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        first = subprocess.run(_train_cmd(qwen_dir, disk / "first", steps=4), capture_output=True, text=True,
                               timeout=600, env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (disk / "first").rglob("*") if p.is_file()}
        limit = None
        if mounted:  # leave about 300 kB: enough to start, not enough for the checkpoints
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            (disk / "filler").write_bytes(b"\0" * max(0, free - 300_000))
        else:
            limit = 40_000  # bytes per file: the optimizer state of a checkpoint does not fit

        def preexec():
            if limit:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        full = subprocess.run(_train_cmd(qwen_dir, disk / "second"), capture_output=True, text=True, timeout=600,
                              env=env, preexec_fn=preexec)
        assert full.returncode != 0
        errors = [x for x in full.stderr.splitlines() if x.startswith("medqa: error")]  # a line of its own
        assert len(errors) == 1 and errors[0].startswith("medqa: error: writing failed, the disk is full"), \
            full.stderr[-2000:]
        assert "Traceback" not in full.stderr
        assert {p: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (disk / "first").rglob("*") if p.is_file()} == digest  # the finished run is intact
        second = disk / "second"
        for f in second.rglob("*.json"):  # written atomically: complete or absent
            json.loads(f.read_text())
        assert not list(second.rglob("*.tmp*"))
        ck = last_complete_checkpoint(second / "checkpoints")
        if mounted:
            (disk / "filler").unlink()
        resumed = subprocess.run(_train_cmd(qwen_dir, second) + ["--resume"], capture_output=True, text=True,
                                 timeout=600, env=env)
        usage = subprocess.run(["du", "-a", str(disk)], capture_output=True, text=True).stdout
        assert resumed.returncode == 0, resumed.stderr[-600:] + usage
        assert (ck is None) or f"resuming from {ck}" in resumed.stdout
        assert (second / "adapter" / "adapter_model.safetensors").is_file()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _cli_train(qwen_dir, data, run, *extra):
    from medqa.cli import main

    return main(["train", "--model", str(qwen_dir), "--data", str(data), "--out", str(run),
                 "--train.max_steps", "2", "--train.batch_size", "2", "--train.grad_accum", "1",
                 "--train.save_steps", "1", "--train.report_to", "[]", "--train.calibration_size", "0", *extra])


def test_a_fresh_run_into_a_used_folder_is_refused_and_deletes_nothing(qwen_dir, small_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli_train(qwen_dir, small_jsonl, run, "--train.eval_size", "2", "--train.eval_steps", "1") == 0
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert (run / "metrics.jsonl").is_file() and (run / "best" / "best.json").is_file()
    capsys.readouterr()
    assert _cli_train(qwen_dir, small_jsonl, run, "--train.lr", "1e-3") == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "--resume" in err and "--overwrite" in err
    after = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing deleted, nothing rewritten


def test_overwrite_replaces_the_earlier_run_and_leaves_other_files(qwen_dir, small_jsonl, tmp_path):
    run = tmp_path / "run"
    assert _cli_train(qwen_dir, small_jsonl, run, "--train.max_steps", "3") == 0
    assert (run / "checkpoints" / "checkpoint-3").is_dir()
    (run / "my_notes.txt").write_text("mine")
    assert _cli_train(qwen_dir, small_jsonl, run, "--overwrite") == 0
    # the earlier run's checkpoint-3 is gone, so a later --resume cannot pick it up
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert (run / "my_notes.txt").read_text() == "mine"
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 2


def test_resume_refuses_another_runs_checkpoint(qwen_dir, small_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli_train(qwen_dir, small_jsonl, run) == 0
    ck = run / "checkpoints" / "checkpoint-2"
    assert json.loads((ck / "medqa_run.json").read_text())["config_sha256"]
    capsys.readouterr()
    assert _cli_train(qwen_dir, small_jsonl, run, "--resume", "--train.lr", "1e-3") == 2
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "train.lr: 0.0002 -> 0.001" in err
    (ck / "medqa_run.json").unlink()  # e.g. written by an older MedQA or copied from elsewhere
    assert _cli_train(qwen_dir, small_jsonl, run, "--resume") == 2
    assert "was not written by this run" in capsys.readouterr().err
    # the same config resumes (training longer is allowed)
    (run / "checkpoints" / "checkpoint-2" / "medqa_run.json").write_text(
        json.dumps(__import__("medqa.training", fromlist=["run_identity"]).run_identity(
            build_config(None, {"model.name": str(qwen_dir), "data.path": str(small_jsonl), "out": str(run),
                                "train.max_steps": 2, "train.batch_size": 2, "train.grad_accum": 1,
                                "train.save_steps": 1, "train.report_to": [], "train.calibration_size": 0}))))
    assert _cli_train(qwen_dir, small_jsonl, run, "--resume", "--train.max_steps", "3") == 0
    assert json.loads((run / "train_summary.json").read_text())["resumed_from_step"] == 2


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    from medqa.errors import ConfigError
    from medqa.training import prepare_run_dir

    with pytest.raises(ConfigError, match="exclude each other"):
        prepare_run_dir(tmp_path, resume=True, overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_run_dir(tmp_path / "f", resume=False, overwrite=False)
    assert prepare_run_dir(tmp_path / "new", resume=False, overwrite=False) == []
