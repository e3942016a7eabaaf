"""`convert_original_checkpoint` / `llasm convert-original` on a synthetic checkpoint in the original LLaSM format.

The synthetic source has the original's real key names (LLaMA keys + `model.mm_projector.*` + the
`rotary_emb.inv_freq` buffers), two pickled `.bin` shards with `pytorch_model.bin.index.json`, the original
`config.json` fields, and a tokenizer with the three added tokens as the last vocabulary rows; Whisper is a tiny
Hugging Face checkpoint directory with 1-second windows (the "30 s" of these tests).

The reference is written here, independently of the package: stock `WhisperModel` over each window padded to the
full window with `num_queries` copies of the decoder start token -> `mm_projector` -> written over the
`<au_patch>` embeddings (every clip, in order) -> stock `LlamaForCausalLM`.
"""

import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperModel,
)

from modeling_llasm.cli import main as cli_main
from modeling_llasm.conversion.original_llasm import OriginalCheckpointError, convert_original_checkpoint
from tiny_llasm import tone

QUERIES = 4  # audio_token_len of the synthetic checkpoint (64 in the released ones)
START_TOKEN = 7  # the tiny Whisper's decoder_start_token_id (50258 in whisper-large-v2)
SYSTEM = (
    "You are a helpful language and speech assistant. You are able to understand the speech content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
ADDED = {"cllama2": ["<au_patch>", "<au_start>", "<au_end>"], "baichuan": ["<pad>", "<au_patch>", "<au_start>", "<au_end>"]}
CORPUS = [
    "you are a helpful language and speech assistant", "transcribe the speech", "[INST] <<SYS>> <</SYS>> [/INST]",
    "USER: ASSISTANT:", "请把这段话翻译成英文", "你好，今天天气很好。", "我们一起学习语音模型", "好的，没问题",
] * 20


# ----------------------------------------------------------------------------------------------------------------
# synthetic original checkpoint
# ----------------------------------------------------------------------------------------------------------------
def build_source_tokenizer(variant: str) -> PreTrainedTokenizerFast:
    """Byte-level BPE covering CJK; `<unk>`, `<s>`, `</s>` = 0, 1, 2 like LLaMA; the variant's tokens appended."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.add_tokens(ADDED[variant], special_tokens=True)
    return tokenizer


def build_original_checkpoint(root, variant="cllama2", seed=0):
    """Write `root/src` (original LLaSM format) and `root/whisper` (HF Whisper dir); return both paths."""
    torch.manual_seed(seed)
    src, whisper_dir = root / "src", root / "whisper"
    src.mkdir(parents=True)
    tokenizer = build_source_tokenizer(variant)
    tokenizer.save_pretrained(src)
    # the released Cllama2 files say bos </s> (the converter must use <s>)
    (src / "special_tokens_map.json").write_text(json.dumps({"bos_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}))
    vocab = len(tokenizer)

    whisper_config = WhisperConfig(
        d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=50, max_target_positions=16, num_mel_bins=80,
        vocab_size=60, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=START_TOKEN,
    )
    WhisperForConditionalGeneration(whisper_config).save_pretrained(whisper_dir)
    WhisperFeatureExtractor(feature_size=80, chunk_length=1).save_pretrained(whisper_dir)

    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ))
    state = {key: value.clone() for key, value in llama.state_dict().items()}
    for layer in range(2):  # the persistent rotary buffer of transformers 4.28-4.31 checkpoints
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    state["model.mm_projector.weight"] = torch.randn(32, 16) * 0.2
    state["model.mm_projector.bias"] = torch.randn(32) * 0.1
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    weight_map = {}
    for name, shard_keys in shards.items():
        torch.save({key: state[key] for key in shard_keys}, src / name)
        weight_map.update({key: name for key in shard_keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (src / "config.json").write_text(json.dumps({
        "architectures": ["LlaaaLlamaForCausalLM"], "model_type": "llaaa", "audio_token_len": QUERIES,
        "mm_hidden_size": 16, "mm_audio_tower": "openai/whisper-large-v2", "use_mm_proj": True,
        "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "hidden_act": "silu", "hidden_size": 32,
        "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 4,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "initializer_range": 0.02, "vocab_size": vocab,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "use_cache": False,
        "torch_dtype": "float32", "transformers_version": "4.28.0.dev0",
    }))
    (src / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
    return src, whisper_dir


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("original")
    src, whisper_dir = build_original_checkpoint(root)
    dst = convert_original_checkpoint(src, root / "converted", whisper_dir, variant="cllama2")
    return src, whisper_dir, dst


@pytest.fixture(scope="module")
def converted(original):
    dst = original[2]
    return AutoModel.from_pretrained(dst, dtype=torch.float32).eval(), AutoProcessor.from_pretrained(dst)


# ----------------------------------------------------------------------------------------------------------------
# independent reference of the original computation
# ----------------------------------------------------------------------------------------------------------------
def original_state(src):
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    state = {}
    for name in sorted(set(index["weight_map"].values())):
        state.update(torch.load(src / name, weights_only=True))
    return state


def original_audio_tokens(src, whisper_dir, clip):
    """Original LLaSM audio path for one clip: features padded/truncated to the window, WhisperModel with
    `QUERIES` start tokens as decoder input, last_hidden_state -> mm_projector."""
    state = original_state(src)
    features = WhisperFeatureExtractor.from_pretrained(whisper_dir)(clip, sampling_rate=16000, return_tensors="pt").input_features
    whisper = WhisperModel.from_pretrained(whisper_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = whisper(input_features=features, decoder_input_ids=torch.full((1, QUERIES), START_TOKEN)).last_hidden_state[0]
        return hidden @ state["model.mm_projector.weight"].T + state["model.mm_projector.bias"]


def original_logits(src, whisper_dir, input_ids, clips):
    """Splice each clip's tokens after its `<au_start>` (every clip; the original code kept only the last one)."""
    state = original_state(src)
    config = json.loads((src / "config.json").read_text())
    llama = LlamaForCausalLM(LlamaConfig(**{k: config[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")})).eval()
    llama.load_state_dict({k: v for k, v in state.items() if "mm_projector" not in k and "inv_freq" not in k})
    tokenizer = AutoTokenizer.from_pretrained(src)
    start, end = tokenizer.convert_tokens_to_ids(["<au_start>", "<au_end>"])
    ids = input_ids[0]
    starts = (ids == start).nonzero().flatten().tolist()
    assert len(starts) == len(clips)
    with torch.no_grad():
        embeds = llama.model.embed_tokens(input_ids).clone()
        for position, clip in zip(starts, clips):
            assert ids[position + QUERIES + 1] == end
            embeds[0, position + 1 : position + 1 + QUERIES] = original_audio_tokens(src, whisper_dir, clip)
        return llama(inputs_embeds=embeds).logits


def audio_item(clip):
    return {"type": "audio", "array": clip, "sampling_rate": 16000}


def patch_block():
    return "<au_start>" + "<au_patch>" * QUERIES + "<au_end>"


# ----------------------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------------------
def test_converted_checkpoint_files_and_config(original):
    src, _, dst = original
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "llasm" and config["adaptor_type"] == "whisper_resampler"
    assert config["num_queries"] == QUERIES and config["audio_token"] == "<au_patch>"
    assert config["audio_config"]["decoder_start_token_id"] == START_TOKEN
    assert config["text_config"]["vocab_size"] == json.loads((src / "config.json").read_text())["vocab_size"]
    assert "AutoModelForCausalLM" in config["auto_map"]
    assert (dst / "chat_template.jinja").is_file() and (dst / "modeling_llasm.py").is_file()
    assert not list(dst.glob("*.bin")) and list(dst.glob("*.safetensors"))
    assert not (dst.parent / (dst.name + ".incomplete")).exists()
    generation = json.loads((dst / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["temperature"]) == (1, 2, 0.2)


def test_token_ids_match_the_original(converted, original):
    model, processor = converted
    vocab = model.config.text_config.vocab_size
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<au_patch>", "<au_start>", "<au_end>"]) == [vocab - 3, vocab - 2, vocab - 1]
    assert model.config.audio_token_id == vocab - 3  # 32000 / 32001 / 32002 for the real Cllama2
    assert tokenizer.bos_token == "<s>" and tokenizer.convert_tokens_to_ids("<s>") == 1
    assert processor.pad_to_window and processor.adaptor_type == "whisper_resampler" and processor.num_queries == QUERIES


def test_single_clip_logits_equal_the_original_computation(converted, original):
    src, whisper_dir, _ = original
    model, processor = converted
    clip = tone(0.7, seed=1)
    inputs = processor.apply_chat_template([{"role": "user", "content": [audio_item(clip)]}], add_generation_prompt=True)
    prompt = f"<s>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{patch_block()} [/INST] "  # official inference input
    expected_ids = AutoTokenizer.from_pretrained(src)(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert expected_ids[0, 0] == 1
    assert torch.equal(inputs["input_ids"], expected_ids)
    with torch.no_grad():
        ours = model(**inputs).logits
    torch.testing.assert_close(ours, original_logits(src, whisper_dir, expected_ids, [clip]), rtol=1e-4, atol=1e-5)


def test_chinese_multi_turn_multi_audio_keeps_every_clip(converted, original):
    src, whisper_dir, _ = original
    model, processor = converted
    first, second = tone(0.8, freq=300.0, seed=2), tone(0.5, freq=900.0, seed=3)
    messages = [
        {"role": "user", "content": [audio_item(first), {"type": "text", "text": "请把这段话翻译成英文"}]},
        {"role": "assistant", "content": "好的，没问题"},
        {"role": "user", "content": [audio_item(second)]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected_text = (
        f"<s>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n<au_start><au_patch><au_end>\n请把这段话翻译成英文 [/INST] 好的，没问题 </s>"
        "<s>[INST] <au_start><au_patch><au_end> [/INST] "
    )
    assert text == expected_text
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    expanded = expected_text.replace("<au_start><au_patch><au_end>", patch_block())
    expected_ids = AutoTokenizer.from_pretrained(src)(expanded, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(inputs["input_ids"], expected_ids)
    assert "请把这段话翻译成英文" in processor.decode(inputs["input_ids"][0]) and "好的，没问题" in processor.decode(inputs["input_ids"][0])
    with torch.no_grad():
        output = model(**inputs)
    # each clip's tokens come from its own audio (the original code spliced only the last clip)
    first_tokens = original_audio_tokens(src, whisper_dir, first)
    second_tokens = original_audio_tokens(src, whisper_dir, second)
    torch.testing.assert_close(output.audio_hidden_states[:QUERIES], first_tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.audio_hidden_states[QUERIES:], second_tokens, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first_tokens, second_tokens, atol=1e-3)
    torch.testing.assert_close(output.logits, original_logits(src, whisper_dir, expected_ids, [first, second]), rtol=1e-4, atol=1e-5)


def test_audio_longer_than_the_window_is_windowed_not_cut(converted, original):
    src, whisper_dir, _ = original
    model, processor = converted
    window = processor.feature_extractor.n_samples  # 1 s here; 30 s for real Whisper
    clip = tone(2.5, seed=5)
    inputs = processor.apply_chat_template([{"role": "user", "content": [audio_item(clip)]}], add_generation_prompt=True)
    ids = inputs["input_ids"][0]
    assert int((ids == model.config.audio_token_id).sum()) == 3 * QUERIES  # 3 windows x num_queries
    assert int((ids == processor.tokenizer.convert_tokens_to_ids("<au_start>")).sum()) == 1  # one clip, one start/end
    assert inputs["input_features"].shape[0] == 3
    with torch.no_grad():
        tokens = model(**inputs).audio_hidden_states
    for index in range(3):  # every window, the last (half) one included, as the original would compute it alone
        piece = clip[index * window : (index + 1) * window]
        torch.testing.assert_close(tokens[index * QUERIES : (index + 1) * QUERIES], original_audio_tokens(src, whisper_dir, piece), rtol=1e-4, atol=1e-5)


def test_baichuan_variant(tmp_path):
    src, whisper_dir = build_original_checkpoint(tmp_path, variant="baichuan", seed=1)
    dst = convert_original_checkpoint(src, tmp_path / "converted", whisper_dir, variant="baichuan", dtype="float32")
    model = AutoModel.from_pretrained(dst, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(dst)
    vocab = model.config.text_config.vocab_size
    assert processor.tokenizer.convert_tokens_to_ids(["<pad>", "<au_patch>", "<au_start>", "<au_end>"]) == list(range(vocab - 4, vocab))
    assert processor.tokenizer.pad_token == "<pad>"
    clip = tone(0.6, seed=7)
    messages = [{"role": "user", "content": [audio_item(clip)]}]
    assert processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == f"{SYSTEM}USER:<au_start><au_patch><au_end>ASSISTANT:"
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    prompt = f"{SYSTEM}USER:{patch_block()}ASSISTANT:"
    expected_ids = AutoTokenizer.from_pretrained(src)(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(inputs["input_ids"], expected_ids)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, original_logits(src, whisper_dir, expected_ids, [clip]), rtol=1e-4, atol=1e-5)
    with pytest.raises(OriginalCheckpointError, match="'baichuan' variant"):
        convert_original_checkpoint(src, tmp_path / "wrong", whisper_dir, variant="cllama2")


@pytest.fixture
def source_copy(original, tmp_path):
    src, whisper_dir, _ = original
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    return copy, whisper_dir


def assert_nothing_written(dst):
    assert not dst.exists() and not (dst.parent / (dst.name + ".incomplete")).exists()


def test_missing_shard_is_a_clear_error(source_copy, tmp_path):
    src, whisper_dir = source_copy
    (src / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(OriginalCheckpointError, match="pytorch_model-00002-of-00002.bin"):
        convert_original_checkpoint(src, tmp_path / "out", whisper_dir)
    assert_nothing_written(tmp_path / "out")


def test_wrong_shape_is_a_clear_error(source_copy, tmp_path):
    src, whisper_dir = source_copy
    shard = src / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    key = next(k for k in state if k.endswith("mlp.up_proj.weight"))
    state[key] = torch.zeros(65, 32)
    torch.save(state, shard)
    with pytest.raises(OriginalCheckpointError, match=r"up_proj.weight.*shape \(65, 32\), expected \(64, 32\)"):
        convert_original_checkpoint(src, tmp_path / "out", whisper_dir)
    assert_nothing_written(tmp_path / "out")


def test_unknown_key_is_a_clear_error(source_copy, tmp_path):
    src, whisper_dir = source_copy
    index_path = src / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    shard = src / "pytorch_model-00002-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["model.vision_tower.weight"] = torch.zeros(2)
    torch.save(state, shard)
    index["weight_map"]["model.vision_tower.weight"] = shard.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(OriginalCheckpointError, match="model.vision_tower.weight"):
        convert_original_checkpoint(src, tmp_path / "out", whisper_dir)
    # an unlisted key found inside a shard (no index check possible) is refused as well
    del index["weight_map"]["model.vision_tower.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(OriginalCheckpointError, match="unknown key 'model.vision_tower.weight'"):
        convert_original_checkpoint(src, tmp_path / "out", whisper_dir)
    assert_nothing_written(tmp_path / "out")


def test_missing_key_is_a_clear_error(source_copy, tmp_path):
    src, whisper_dir = source_copy
    index_path = src / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.mm_projector.bias"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(OriginalCheckpointError, match="multi_modal_projector.linear.bias"):
        convert_original_checkpoint(src, tmp_path / "out", whisper_dir)


def test_cli_converts_and_reports_errors(original, tmp_path, capsys):
    src, whisper_dir, _ = original
    dst = tmp_path / "bf16"
    rc = cli_main(["convert-original", str(src), str(dst), "--whisper", str(whisper_dir), "--dtype", "bfloat16", "--max-shard-size-gb", "0.00001"])
    assert rc == 0
    assert json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # tiny shard limit -> several output shards
    model = AutoModel.from_pretrained(dst)
    assert model.dtype == torch.bfloat16
    assert cli_main(["convert-original", str(src), str(dst), "--whisper", str(whisper_dir)]) == 1  # dst not empty
    assert "not empty" in capsys.readouterr().err
    assert cli_main(["convert-original", str(src), str(tmp_path / "x"), "--whisper", str(tmp_path / "nowhere")]) == 1
    assert "Whisper" in capsys.readouterr().err
    assert cli_main(["convert-original", str(src), str(tmp_path / "y"), "--whisper", str(whisper_dir), "--variant", "baichuan"]) == 1
    assert "'cllama2' variant" in capsys.readouterr().err


SPM_CORPUS = CORPUS + ["the quick brown fox jumps over the lazy dog", "please answer in one sentence"] * 20


def test_sentencepiece_tokenizer_gets_the_original_fast_pipeline(tmp_path):
    """A `tokenizer.model` checkpoint (like the released Cllama2) gets the transformers 4.31 fast-tokenizer
    behaviour of the original infer.py: every text piece between special tokens is sentencepiece-encoded with its
    dummy prefix, so the ids equal sentencepiece's own encoding of each piece."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from modeling_llasm.chat_templates import load_chat_template
    from modeling_llasm.conversion.original_llasm import load_original_tokenizer

    (tmp_path / "corpus.txt").write_text("\n".join(SPM_CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=400, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2,
    )
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tmp_path / "sp.model", src / "tokenizer.model")
    token = lambda text: {"__type": "AddedToken", "content": text, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    (src / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": token("<s>"), "eos_token": token("</s>"),
        "unk_token": token("<unk>"), "pad_token": None, "model_max_length": 2048, "padding_side": "right",
        "clean_up_tokenization_spaces": False, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    }))
    (src / "special_tokens_map.json").write_text(json.dumps({"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}))
    (src / "added_tokens.json").write_text(json.dumps({"<au_patch>": 400, "<au_start>": 401, "<au_end>": 402}))

    tokenizer = load_original_tokenizer(src, "cllama2", vocab_size=403)
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    messages = [{"role": "user", "content": "<au_patch>\n请把这段话翻译成英文"}, {"role": "assistant", "content": "好的"}, {"role": "user", "content": "hello"}]
    text = tokenizer.apply_chat_template(messages, chat_template=load_chat_template("llasm_cllama2"), tokenize=False)
    start, patch, end = 401, 400, 402
    expected = (
        [1] + sp.encode(f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n") + [start, patch, end]
        + sp.encode("\n请把这段话翻译成英文 [/INST] 好的 ") + [2] + [1] + sp.encode("[INST] hello [/INST] ")
    )
    for tok in (tokenizer, reloaded):
        assert tok(text, add_special_tokens=False)["input_ids"] == expected
        assert tok("hello")["input_ids"][0] == 1  # BOS is <s> (the released files say </s>)
        assert tok.decode(sp.encode("请把这段话翻译成英文")) == "请把这段话翻译成英文"


def test_greedy_generation_follows_the_original_computation(converted, original):
    src, whisper_dir, _ = original
    model, processor = converted
    clip = tone(0.9, seed=11)
    inputs = processor.apply_chat_template([{"role": "user", "content": [audio_item(clip), {"type": "text", "text": "transcribe the speech"}]}], add_generation_prompt=True)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    ids = inputs["input_ids"]
    for _ in range(4):  # greedy decoding with the reference, re-running the full prompt each step
        next_id = original_logits(src, whisper_dir, ids, [clip])[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(generated, ids)
