"""transformers' common model tests (`ModelTesterMixin`, `ConfigTester`) and our generation checks
(`generation_checks.py`, in place of `GenerationTesterMixin`) on tiny LLaSM models of each adaptor kind."""

from __future__ import annotations

import unittest

import pytest
import torch
from conftest import collect_ignore_reason
from transformers import LlamaConfig, WhisperConfig

from modeling_llasm import LlasmConfig, LlasmForConditionalGeneration


if collect_ignore_reason():
    pytest.skip(collect_ignore_reason(), allow_module_level=True)

from generation_checks import LlasmGenerationChecks  # noqa: E402
from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor  # noqa: E402


class LlasmModelTester:
    """Tiny configs and random inputs: `batch_size` prompts, each `text_length` text tokens around one 1-s audio
    window's placeholders (one window per sample, so that slicing the batch slices the audio too)."""

    def __init__(self, parent, adaptor_type: str = "stack_mlp", batch_size: int = 3, text_length: int = 7, **config_kwargs):
        self.parent = parent
        self.adaptor_type = adaptor_type
        self.config_kwargs = config_kwargs
        self.batch_size = batch_size
        self.text_length = text_length
        # the placeholder is a low id, as Qwen2-Audio's tester has it: tests that shrink the vocabulary keep it
        self.vocab_size, self.audio_token_id, self.pad_token_id = 99, 1, 0
        self.mel_frames, self.num_mel_bins = 100, 80
        # attributes ModelTesterMixin reads
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 32, 2, 4
        self.is_training = True
        self.seq_length = text_length + self.num_audio_tokens(self.get_config())
        self.num_hidden_states_types = 2  # the LLM's hidden states and the audio encoder's

    def get_config(self) -> LlasmConfig:
        audio = WhisperConfig(
            d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
            decoder_attention_heads=2, decoder_ffn_dim=32, max_source_positions=50, max_target_positions=32,
            num_mel_bins=self.num_mel_bins, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=60,
            decoder_start_token_id=61,
        )  # fmt: skip
        text = LlamaConfig(
            hidden_size=self.hidden_size, intermediate_size=37, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=2, vocab_size=self.vocab_size,
            pad_token_id=self.pad_token_id, max_position_embeddings=512,
        )  # fmt: skip
        return LlasmConfig(audio_config=audio, text_config=text, adaptor_type=self.adaptor_type, stack_factor=2,
                           audio_token_id=self.audio_token_id, **self.config_kwargs)  # fmt: skip

    def num_audio_tokens(self, config: LlasmConfig) -> int:
        return config.num_audio_tokens(self.mel_frames)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        slots = self.num_audio_tokens(config)
        input_ids = ids_tensor([self.batch_size, self.text_length + slots], self.vocab_size - 2) + 2
        input_ids[:, 2 : 2 + slots] = self.audio_token_id
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, 0] = 0  # left padding
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "input_features": floats_tensor([self.batch_size, self.num_mel_bins, self.mel_frames]),
            "input_features_mask": torch.ones(self.batch_size, self.mel_frames, dtype=torch.long),
        }
        return config, inputs

    @staticmethod
    def sample_inputs(inputs: dict, row: int) -> dict:
        """Sample `row` alone (its one audio window)."""
        return {key: value[row : row + 1] for key, value in inputs.items()}


class LlasmCommonTests(ModelTesterMixin, LlasmGenerationChecks):
    adaptor_type = "stack_mlp"
    config_kwargs: dict = {}
    # as in transformers' Qwen2-Audio and Voxtral tests: the generative class (LlasmModel: tests/core/test_v5_layout.py)
    all_model_classes = (LlasmForConditionalGeneration,)
    all_generative_model_classes = (LlasmForConditionalGeneration,)
    pipeline_model_mapping = {}
    _is_composite = True
    test_can_init_all_missing_weights_before_2023 = True  # run it: this file has no copyright year to date it by

    def setUp(self):
        self.model_tester = LlasmModelTester(self, self.adaptor_type, **self.config_kwargs)
        self.config_tester = ConfigTester(self, config_class=LlasmConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # transformers adds labels for the causal-LM classes of its own mappings; LLaSM's generative class is one
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels and model_class in self.all_generative_model_classes:
            inputs_dict["labels"] = torch.zeros_like(inputs_dict["input_ids"])
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()


class LlasmStackMlpModelTest(LlasmCommonTests, unittest.TestCase):
    adaptor_type = "stack_mlp"


class LlasmLinearModelTest(LlasmCommonTests, unittest.TestCase):
    adaptor_type = "linear"


class LlasmWhisperResamplerModelTest(LlasmCommonTests, unittest.TestCase):
    adaptor_type = "whisper_resampler"
    config_kwargs = {"num_queries": 8}


class LlasmCtcCompressModelTest(LlasmCommonTests, unittest.TestCase):
    adaptor_type = "ctc_compress"
    config_kwargs = {"ctc_vocab_size": 40}


class LlasmWhisperReaderModelTest(LlasmCommonTests, unittest.TestCase):
    adaptor_type = "whisper_reader"
    # whole-word respellings, as every real reader has (the bases: tens of thousands); with none, the three spelling
    # tables are empty tensors, whose shared null storage the tied-weights check reads as tied
    config_kwargs = {"reader_num_spellings": 2}

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        """transformers' check counts the recomputations of the first checkpointing layer, the audio encoder's; the
        reader's encoder output reaches the LLM only through its greedy (argmax) reading, so no gradient flows back
        into it and it is never recomputed. The same check on the first layer gradients reach, the LLM's: recomputed
        in the backward pass, with the loss and every gradient of the run without checkpointing."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        config.use_cache = False
        inputs = self._prepare_for_class(inputs, LlasmForConditionalGeneration, return_labels=True)
        torch.manual_seed(42)
        model = LlasmForConditionalGeneration(config).train()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        loss = model(**inputs).loss
        loss.backward()
        expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)
        layer = model.model.language_model.layers[0]
        checkpoint, runs = layer._gradient_checkpointing_func, []

        def counted(forward, *args, **kwargs):
            def run(*a, **k):
                runs.append(torch.is_grad_enabled())
                return forward(*a, **k)

            return checkpoint(run, *args, **kwargs)

        layer._gradient_checkpointing_func = counted
        checkpointed = model(**inputs).loss
        checkpointed.backward()
        self.assertGreater(len(runs), 1)  # the forward, and its recomputation in the backward pass
        torch.testing.assert_close(checkpointed, loss)
        self.assertEqual(sorted(n for n, p in model.named_parameters() if p.grad is not None), sorted(expected))
        for name, grad in expected.items():
            torch.testing.assert_close(model.get_parameter(name).grad, grad, msg=name)
