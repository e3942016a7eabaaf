import json

import pytest

from modeling_llasm.data import chat
from modeling_llasm.data.conversations import SkippedRecord, normalize_conversation, read_conversations
from modeling_llasm.data.filters import FilterConfig, detect_language, has_code, has_table, has_url


def _roles_and_parts(record):
    return [(m["role"], [p["type"] for p in m["content"]]) for m in record["messages"]]


def test_sharegpt_alpaca_and_messages_formats():
    sharegpt = normalize_conversation(
        {"id": "abc", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": " Hi there "},
                                        {"from": "gpt", "value": "Hello!"}]}, "f-0000000")  # fmt: skip
    assert sharegpt["id"] == "f-0000000" and sharegpt["source_id"] == "abc" and sharegpt["language"] == "en"
    assert _roles_and_parts(sharegpt) == [("system", ["text"]), ("user", ["audio"]), ("assistant", ["text"])]
    assert sharegpt["messages"][1]["content"][0] == {"type": "audio", "transcript": "Hi there"}  # pending: no path
    chat.validate_record(sharegpt, require_paths=False)
    with pytest.raises(ValueError, match="needs a string 'path'"):
        chat.validate_record(sharegpt)

    alpaca = normalize_conversation({"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}, "a-1")
    assert alpaca["messages"][0]["content"][0]["transcript"] == "Translate to French.\nGood morning"
    assert alpaca["messages"][1]["content"] == [{"type": "text", "text": "Bonjour"}]
    no_input = normalize_conversation({"instruction": "天空为什么是蓝色的？", "input": "", "output": "因为散射。"}, "a-2")
    assert no_input["messages"][0]["content"][0]["transcript"] == "天空为什么是蓝色的？" and no_input["language"] == "zh"

    messages = normalize_conversation(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}, {"role": "assistant", "content": "Hi"}]}, "m-1"
    )
    assert _roles_and_parts(messages) == [("user", ["audio"]), ("assistant", ["text"])]


@pytest.mark.parametrize(
    "raw, message",
    [({"foo": 1}, "unknown format"), ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown speaker 'alien'"),
     ({"conversations": [{"from": "human", "value": "  "}]}, "turn 0 .user. is empty"),
     ({"conversations": "nope"}, "must be a list"), ([1, 2], "expected a JSON object")],
)  # fmt: skip
def test_bad_records_name_the_problem(raw, message):
    from modeling_llasm.data.conversations import ConversationFormatError

    with pytest.raises(ConversationFormatError, match=message):
        normalize_conversation(raw, "x")


def test_read_json_and_jsonl(tmp_path, write_jsonl):
    records = [{"conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": "Yes."}]} for i in range(3)]
    records.insert(1, {"oops": True})
    (tmp_path / "array.json").write_text(json.dumps(records))
    jsonl = write_jsonl("lines.jsonl", records)
    for path, stem in ((tmp_path / "array.json", "array"), (jsonl, "lines")):
        out = list(read_conversations(path))
        assert [r.id if isinstance(r, SkippedRecord) else r["id"] for r in out] == [f"{stem}-{i:07d}" for i in range(4)]
        assert isinstance(out[1], SkippedRecord) and out[1].reason.startswith("bad_format: unknown format")
    jsonl.write_text(jsonl.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"lines\.jsonl:5: invalid JSON"):
        list(read_conversations(jsonl))


def test_language_and_content_detectors():
    assert detect_language("What is the capital of France?") == "en"
    assert detect_language("中国的首都是哪里？") == "zh"
    assert detect_language("Quelle est la capitale de la Fédération? Ça dépend, élève, où, très") == "other"
    assert detect_language("...") == "other"
    assert has_code("Fix this:\n```python\nprint(1)\n```")
    assert has_code("def f(x):\n    return x;\n}")
    assert not has_code("How do I define a function in Python?")
    assert has_url("see https://example.org/x") and has_url("go to www.example.com") and has_url("visit example.com now")
    assert not has_url("I like apples. Bananas too.")
    assert has_table("| a | b |\n|---|---|\n| 1 | 2 |") and not has_table("a | b")


@pytest.mark.parametrize(
    "turns, reason",
    [([("user", "What is a noun?"), ("assistant", "A word.")], None),
     ([("user", "x" * 401), ("assistant", "ok")], "human_turn_too_long"),
     ([("user", "?"), ("assistant", "ok")], "human_turn_too_short"),
     ([("user", "Run this: ```ls```"), ("assistant", "ok")], "code_in_user_turn"),
     ([("user", "Read https://a.b/c please"), ("assistant", "ok")], "url_in_user_turn"),
     ([("user", "| a | b |\n|---|---|"), ("assistant", "ok")], "table_in_user_turn"),
     ([("user", "=> {{ x * y }} <= $$ ## @@"), ("assistant", "ok")], "too_many_symbols"),
     ([("user", "Bonjour, ça va très bien à Orléans?"), ("assistant", "Oui")], "language_other"),
     ([("user", "Hi there")], "no_assistant_turn"),
     ([("assistant", "Hi there")], "no_human_turn"),
     ([("user", "Show code"), ("assistant", "```py\nx=1\n```")], None)],
)  # fmt: skip
def test_filter_reasons(turns, reason):
    got = FilterConfig().check_conversation(turns)
    assert (got is None) if reason is None else got.startswith(reason), got


def test_filter_options():
    code_answer = [("user", "Show code"), ("assistant", "```py\nx=1\n```")]
    assert FilterConfig(check_assistant=True).check_conversation(code_answer) == "code_in_assistant_turn"
    assert FilterConfig(skip_code=False, max_symbol_ratio=1.0).check_conversation([("user", "Run ```ls```"), ("assistant", "ok")]) is None
    assert FilterConfig(languages=("zh",)).check_conversation([("user", "Hello"), ("assistant", "Hi")]).startswith("language_en")
    assert FilterConfig(max_assistant_chars=5).check_conversation([("user", "Hello"), ("assistant", "Hi there!")]).startswith(
        "assistant_turn_too_long"
    )


def test_manifest_round_trip(tmp_path):
    record = {"id": "r1", "messages": [chat.message("user", chat.audio_part("hi", "audio/r1.wav")),
                                        chat.message("assistant", chat.text_part("hello"))]}  # fmt: skip
    path = tmp_path / "sub" / "manifest.jsonl"
    assert chat.write_manifest([record], path) == 1
    back = list(chat.read_manifest(path))
    assert back[0]["messages"][0]["content"][0]["path"] == str(tmp_path / "sub" / "audio" / "r1.wav")
    assert list(chat.read_manifest(path, resolve_paths=False)) == [record]
    path.write_text('{"id": "r2", "messages": []}\n')
    with pytest.raises(ValueError, match=r"manifest\.jsonl:1: field 'messages' must be a non-empty list"):
        list(chat.read_manifest(path))
    with pytest.raises(ValueError, match="role must be one of"):
        chat.message("robot", chat.text_part("x"))


def test_transcript_messages_replace_audio_by_its_transcript():
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            chat.message("user", chat.text_part("Listen:"), chat.audio_part("What is a prime?", path="a.wav")),
            chat.message("assistant", chat.text_part("A number with two divisors.")),
        ]
    }
    out = chat.transcript_messages(record["messages"])
    assert out[0] == {"role": "system", "content": "Be brief."}
    assert out[1]["content"] == [{"type": "text", "text": "Listen:"}, {"type": "text", "text": "What is a prime?"}]
    assert out[2] == record["messages"][2]
    assert record["messages"][1]["content"][1]["type"] == "audio"  # the input is not modified

    broken = [{"role": "user", "content": [{"type": "audio", "path": "a.wav"}]}]
    with pytest.raises(ValueError, match=r"rec-7: an audio part has no 'transcript'"):
        chat.transcript_messages(broken, where="rec-7")


def test_input_files_whose_record_ids_would_collide_are_refused_before_building(tmp_path):
    from modeling_llasm.data import builder

    for name in ("chats a.jsonl", "chats_a.json"):
        (tmp_path / name).write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"share the name 'chats_a', which prefixes record ids"):
        builder.build_from_files([tmp_path / "chats a.jsonl", tmp_path / "chats_a.json"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
