"""SIGKILL a training run after its first checkpoint, rerun with resume: it continues from that checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from llasm_training_fixtures import REPO, run_python, tiny_training_files  # noqa: F401  (fixture)


def stage1_command(base_dir, data_dir, output_dir, cache_dir, max_steps: int) -> list[str]:
    return ["examples/train_stage1.py", "--model_name_or_path", str(base_dir),
            "--train_manifest", str(data_dir / "stage1" / "train"), "--output_dir", str(output_dir),
            "--max_steps", str(max_steps), "--save_steps", "1", "--per_device_train_batch_size", "2",
            "--learning_rate", "1e-3", "--use_cpu", "--report_to", "none", "--logging_steps", "1",
            "--encoder_cache_dir", str(cache_dir), "--disable_tqdm", "true", "--seed", "0"]  # fmt: skip


def complete_checkpoints(output_dir) -> list[int]:
    steps = []
    for path in output_dir.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        steps.append(int(path.name.split("-")[1]))
    return sorted(steps)


def test_sigkill_after_first_checkpoint_then_resume_continues(tiny_training_files, tmp_path):
    base_dir, data_dir = tiny_training_files
    output_dir, max_steps = tmp_path / "out", 12
    command = stage1_command(base_dir, data_dir, output_dir, tmp_path / "cache", max_steps)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    process = subprocess.Popen([sys.executable, *command], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not complete_checkpoints(output_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = complete_checkpoints(output_dir)
    assert killed_at and killed_at[-1] < max_steps
    assert not (output_dir / "train_summary.json").exists()

    result = run_python([*command, "--resume_from_checkpoint", "last"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((output_dir / "train_summary.json").read_text())
    resumed_step = int(summary["resumed_from"].rsplit("-", 1)[1])
    assert resumed_step >= killed_at[-1] - 1  # the newest complete checkpoint (a torn newer one is skipped)
    assert summary["start_step"] == resumed_step > 0
    assert summary["global_step"] == max_steps
    state = json.loads((output_dir / f"checkpoint-{max_steps}" / "trainer_state.json").read_text())
    logged = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged == list(range(1, max_steps + 1))  # history of the first run kept, continued without a restart
