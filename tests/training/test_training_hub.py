"""Hub-ready checkpoints: every save has safetensors, processor, remote code, the llasm-chat pipeline and a card;
`push_to_hub` goes through the Trainer (offline: the upload is intercepted and the folder layout checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from llasm_training_fixtures import spoken_qa_record
from transformers import AutoModelForCausalLM, TrainingArguments

import transformers.trainer
from modeling_llasm.data.collator import LlasmDataCollator
from modeling_llasm.training import LlasmTrainer, check_hub_layout
from modeling_llasm.training.recipe import push_with_trainer


class FakeHubApi:
    """Records what `Trainer.push_to_hub` would create and upload."""

    def __init__(self):
        self.created, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        self.created.append(repo_id)
        return type("RepoUrl", (), {"repo_id": f"user/{repo_id}"})()

    def upload_folder(self, repo_id, folder_path, ignore_patterns=None, **kwargs):
        import fnmatch

        root = Path(folder_path)
        files = sorted(
            str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not any(fnmatch.fnmatch(part, pat) for pat in ignore_patterns or [] for part in p.relative_to(root).parts)
        )  # fmt: skip
        self.uploads.append({"repo_id": repo_id, "files": files, "kwargs": kwargs})
        if kwargs.get("run_as_future"):  # checkpoint pushes during training run in the background
            from concurrent.futures import Future

            done = Future()
            done.set_result("https://huggingface.co/fake/commit")
            return done
        return "https://huggingface.co/fake/commit"


@pytest.fixture
def fake_hub(monkeypatch):
    api = FakeHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    return api


def test_trainer_checkpoints_are_hub_ready(tiny_llasm, tmp_path):
    model, processor = tiny_llasm
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=2, save_steps=1,
                             per_device_train_batch_size=2)  # fmt: skip
    trainer = LlasmTrainer(model=model, args=args, train_dataset=[spoken_qa_record(i) for i in range(4)],
                           data_collator=LlasmDataCollator(processor, "instruct"), processing_class=processor,
                           stage="instruct", model_card={"datasets": ["local/tts-seed"]})  # fmt: skip
    trainer.train()
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        assert check_hub_layout(tmp_path / checkpoint) == [], checkpoint
    card = ModelCard.load(tmp_path / "checkpoint-2" / "README.md")
    assert card.data.base_model and card.data.datasets == ["local/tts-seed"]
    assert "instruct" in card.text and "adaptor + LLM" in card.text


def test_push_to_hub_uploads_a_loadable_hub_ready_folder(tiny_llasm, tmp_path, fake_hub):
    model, processor = tiny_llasm
    card = {"metrics": {"wer": 0.5}, "stages": [{"name": "1 align", "trained": "adaptor", "steps": 3}],
            "datasets": ["local/tts-seed"]}  # fmt: skip
    push_with_trainer(model, processor, tmp_path / "final", "llasm-tiny-test", card)
    assert fake_hub.created == ["llasm-tiny-test"]
    (upload,) = fake_hub.uploads
    assert upload["repo_id"] == "user/llasm-tiny-test"
    files = set(upload["files"])
    expected = {"README.md", "config.json", "generation_config.json", "model.safetensors", "configuration_llasm.py",
                "modeling_llasm.py", "reading_llasm.py", "conversation_cache_llasm.py", "processing_llasm.py", "pipeline_llasm.py", "processor_config.json",
                "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}  # fmt: skip
    assert expected <= files, expected - files
    assert not any(f.endswith(".bin") and f != "training_args.bin" for f in files)
    folder = tmp_path / "final"
    assert check_hub_layout(folder) == []
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llasm.LlasmForConditionalGeneration"
    assert config["custom_pipelines"]["llasm-chat"]["impl"] == "pipeline_llasm.LlasmChatPipeline"
    metadata = ModelCard.load(folder / "README.md").data
    assert metadata.base_model == ["openai/whisper-tiny.en", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert metadata.metrics == ["wer"] and metadata.eval_results[0].metric_value == 0.5
    assert metadata.pipeline_tag == "audio-text-to-text" and metadata.datasets == ["local/tts-seed"]
    reloaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor)


def test_checkpoint_pushes_during_training_carry_code_processor_and_card(tiny_llasm, tmp_path, fake_hub):
    model, processor = tiny_llasm
    args = TrainingArguments(str(tmp_path / "run"), use_cpu=True, report_to=[], max_steps=1, save_steps=1,
                             per_device_train_batch_size=2, push_to_hub=True, hub_model_id="llasm-ckpt-test")  # fmt: skip
    trainer = LlasmTrainer(model=model, args=args, train_dataset=[spoken_qa_record(i) for i in range(2)],
                           data_collator=LlasmDataCollator(processor, "instruct"), processing_class=processor,
                           stage="instruct")  # fmt: skip
    trainer.train()
    if trainer.push_in_progress is not None:
        trainer.push_in_progress.wait_until_done()
    assert fake_hub.uploads, "the checkpoint was not pushed"
    files = set(fake_hub.uploads[0]["files"])
    assert {"modeling_llasm.py", "pipeline_llasm.py", "processor_config.json", "README.md", "config.json"} <= files, files
