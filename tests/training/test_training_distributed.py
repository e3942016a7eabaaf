"""The training script runs unchanged under torchrun: 2 CPU processes (gloo) give the single-process losses."""

from __future__ import annotations

import json
import shutil

import pytest
from llasm_training_fixtures import run_python, tiny_training_files  # noqa: F401  (fixture)


def losses(output_dir, step: int) -> tuple[list[tuple[int, float]], dict]:
    state = json.loads((output_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e], state


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_cpu_processes_match_single_process(tiny_training_files, tmp_path):
    base_dir, data_dir = tiny_training_files
    steps = 3
    common = ["examples/train_stage1.py", "--model_name_or_path", str(base_dir),
              "--train_manifest", str(data_dir / "stage1" / "train"), "--max_steps", str(steps),
              "--learning_rate", "1e-2", "--use_cpu", "--report_to", "none", "--logging_steps", "1",
              "--encoder_cache", "false", "--disable_tqdm", "true", "--train_sampling_strategy", "sequential",
              "--save_steps", str(steps), "--llm_mode", "full"]  # fmt: skip
    # the LLM is trained too (llm_mode full), so DDP must all-reduce the LLM and adaptor gradients correctly
    single = run_python([*common, "--output_dir", str(tmp_path / "single"), "--per_device_train_batch_size", "4"])
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = shutil.which("torchrun")
    ddp = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *common,
                      "--output_dir", str(tmp_path / "ddp"), "--per_device_train_batch_size", "2",
                      "--ddp_backend", "gloo"])  # fmt: skip
    assert torchrun and ddp.returncode == 0, ddp.stderr[-3000:]
    single_losses, single_state = losses(tmp_path / "single", steps)
    ddp_losses, ddp_state = losses(tmp_path / "ddp", steps)
    assert ddp_state["epoch"] == single_state["epoch"] == 1.5  # 3 steps x global batch 4 over 8 samples: 2 ranks ran
    assert [s for s, _ in ddp_losses] == [s for s, _ in single_losses] == [1, 2, 3]
    for (_, a), (_, b) in zip(single_losses, ddp_losses):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
