"""Generation checks for transformers' common test classes, in place of `GenerationTesterMixin` (its module,
transformers' tests/generation/test_utils.py, is not in the source distribution the common tests come from).

Each check runs every class of `all_generative_model_classes` on `model_tester.prepare_config_and_inputs_for_common()`
(prompts with audio) and compares a generation method with what it must equal: greedy search with step-by-step argmax,
a continued cache with one generate call (for adaptors whose audio-token count is known only after
encoding: a continued conversation cache), assisted and prompt-lookup decoding with greedy search, beam search and
several return sequences with each sample generated alone (its own audio windows), sampling with itself.
"""

from __future__ import annotations

import copy

import torch

from modeling_llasm import LlasmConversationCache


class LlasmGenerationChecks:
    max_new_tokens = 5

    def generation_setup(self, model_class):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = model_class(config).eval()
        model.generation_config.pad_token_id = self.model_tester.pad_token_id
        model.generation_config.eos_token_id = None  # random weights: never stop early
        model.generation_config.suppress_tokens = [config.audio_token_id]
        return model, inputs

    def greedy(self, model, inputs, **kwargs):
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, **kwargs)

    def test_greedy_generate_is_stepwise_argmax(self):
        for model_class in self.all_generative_model_classes:
            model, inputs = self.generation_setup(model_class)
            generated = self.greedy(model, inputs)
            prompt = inputs["input_ids"].shape[1]
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            with torch.no_grad():
                for step in range(self.max_new_tokens):  # no cache: the whole sequence every step
                    logits = model(**{**inputs, "input_ids": ids, "attention_mask": mask}).logits[:, -1]
                    logits[:, model.config.audio_token_id] = -torch.inf
                    ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=-1)
                    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
            self.assertEqual(generated[:, prompt:].tolist(), ids[:, prompt:].tolist())

    def test_generate_continues_from_its_cache(self):
        for model_class in self.all_generative_model_classes:
            model, inputs = self.generation_setup(model_class)
            whole = self.greedy(model, inputs)
            if model.config.variable_audio_tokens:
                # `generate` returns every placeholder of the prompt but the cache holds only the audio tokens the
                # adaptor produced (their count is known after encoding): such a chat continues through the
                # conversation cache, which keeps what each cached position holds
                for row in range(whole.shape[0]):
                    single, cache = self.model_tester.sample_inputs(inputs, row), LlasmConversationCache()
                    with torch.no_grad():
                        first = model.generate(**single, max_new_tokens=2, do_sample=False, conversation_cache=cache)
                        held = len(cache)  # the prompt's positions and the first new token (the last was never fed)
                        mask = torch.cat([single["attention_mask"], torch.ones_like(first[:, single["input_ids"].shape[1] :])], dim=-1)
                        rest = model.generate(**{**single, "input_ids": first, "attention_mask": mask}, conversation_cache=cache,
                                              max_new_tokens=self.max_new_tokens - 2, do_sample=False)  # fmt: skip
                    self.assertEqual(cache.reused_tokens, held)
                with torch.no_grad():  # the plain cache continuation is refused, not silently misaligned
                    first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
                    with self.assertRaisesRegex(ValueError, "continue this chat with `conversation_cache"):
                        model.generate(input_ids=first.sequences, cache=first.cache, max_new_tokens=1, do_sample=False)
                    self.assertEqual(rest[0, -self.max_new_tokens :].tolist(), whole[row, -self.max_new_tokens :].tolist())
                continue
            with torch.no_grad():
                first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
                mask = torch.cat([inputs["attention_mask"], inputs["attention_mask"].new_ones(whole.shape[0], 2)], dim=-1)
                # the cache holds the prompt, audio included: the continuation passes the ids only
                rest = model.generate(input_ids=first.sequences, attention_mask=mask, cache=first.cache,
                                      max_new_tokens=self.max_new_tokens - 2, do_sample=False)  # fmt: skip
            self.assertEqual(rest.tolist(), whole.tolist())

    def test_assisted_decoding_matches_greedy(self):
        for model_class in self.all_generative_model_classes:
            model, inputs = self.generation_setup(model_class)
            expected = self.greedy(model, inputs)
            assistant = copy.deepcopy(model)
            with torch.no_grad():  # a different assistant: some of its candidates are rejected
                for parameter in assistant.lm_head.parameters():
                    parameter.add_(torch.randn_like(parameter) * parameter.std())
            for row in range(expected.shape[0]):  # assisted decoding takes one sequence at a time
                single = self.model_tester.sample_inputs(inputs, row)
                got = self.greedy(model, single, assistant_model=assistant)
                self.assertEqual(got[0, -self.max_new_tokens :].tolist(), expected[row, -self.max_new_tokens :].tolist())

    def test_prompt_lookup_decoding_matches_greedy(self):
        for model_class in self.all_generative_model_classes:
            model, inputs = self.generation_setup(model_class)
            expected = self.greedy(model, inputs)
            for row in range(expected.shape[0]):
                single = self.model_tester.sample_inputs(inputs, row)
                got = self.greedy(model, single, prompt_lookup_num_tokens=3)
                self.assertEqual(got[0, -self.max_new_tokens :].tolist(), expected[row, -self.max_new_tokens :].tolist())

    def test_beam_search_and_return_sequences_keep_each_samples_audio(self):
        for model_class in self.all_generative_model_classes:
            model, inputs = self.generation_setup(model_class)
            with torch.no_grad():
                beams = model.generate(**inputs, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
                for row in range(inputs["input_ids"].shape[0]):
                    single = self.model_tester.sample_inputs(inputs, row)
                    alone = model.generate(**single, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
                    self.assertEqual(beams[2 * row : 2 * row + 2, -3:].tolist(), alone[:, -3:].tolist())

    def test_sampling_is_reproducible_and_scores_are_returned(self):
        for model_class in self.all_generative_model_classes:
            model, inputs = self.generation_setup(model_class)
            runs = []
            for _ in range(2):
                torch.manual_seed(0)
                with torch.no_grad():
                    runs.append(model.generate(**inputs, max_new_tokens=3, do_sample=True, top_k=5, return_dict_in_generate=True,
                                               output_scores=True, output_logits=True))  # fmt: skip
            self.assertEqual(runs[0].sequences.tolist(), runs[1].sequences.tolist())
            self.assertEqual(len(runs[0].scores), 3)
            self.assertEqual(tuple(runs[0].logits[0].shape), (inputs["input_ids"].shape[0], model.config.text_config.vocab_size))
