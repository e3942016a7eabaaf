"""`llasm serve`: the OpenAI-compatible server, driven by the official `openai` client (and raw httpx for malformed
requests) against 127.0.0.1, with a tiny random LLaSM. Answers are compared with `model.generate` on the same
inputs, streamed with non-streamed, batched with one-by-one."""

from __future__ import annotations

import argparse
import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="needs the test extra (httpx)")
openai = pytest.importorskip("openai", reason="needs the test extra (openai)")

from serving_helpers import LIMITS, MODEL_ID, audio_part, encode_audio, wait_until  # noqa: E402

from modeling_llasm.serving.server import BackgroundServer  # noqa: E402
from tiny_llasm import speechlike, tone  # noqa: E402

CLIP_A = encode_audio(tone(1.2))
CLIP_B = encode_audio(tone(0.7, freq=300.0, seed=1))
CLIP_C = encode_audio(speechlike(2.0, 3))


def user(*parts) -> dict:
    """A user message: strings become text parts, `(data, format)` tuples audio parts."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else audio_part(*p) for p in parts]
    return {"role": "user", "content": content}


def body(messages: list[dict], **extra) -> dict:
    return {"model": MODEL_ID, "messages": messages, "max_tokens": 8, **extra}


def processor_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages -> `LlasmProcessor` messages with the same encoded audio bytes (decoded as the server does)."""
    out = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [{"type": "text", "text": p["text"]} if p["type"] == "text"
                       else {"type": "audio", "audio": base64.b64decode(p["input_audio"]["data"])} for p in content]  # fmt: skip
        out.append({"role": "system" if message["role"] == "developer" else message["role"], "content": content})
    return out


def direct_answer(served, messages: list[dict], max_tokens: int) -> str:
    """The answer `model.generate` gives for `messages` alone (greedy), decoded as the server decodes it."""
    inputs = served.processor.apply_chat_template(processor_messages(messages), add_generation_prompt=True)
    out = served.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    return served.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def ask(client: openai.OpenAI, messages: list[dict], max_tokens: int = 8, **extra):
    return client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=max_tokens, **extra)


def ask_streaming(client: openai.OpenAI, messages: list[dict], max_tokens: int = 8, **extra) -> dict:
    """Stream an answer; return its text, finish reason, usage and the roles announced."""
    stream = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=max_tokens, stream=True,
                                            stream_options={"include_usage": True}, **extra)  # fmt: skip
    pieces, finish, usage, roles, chunks = [], None, None, [], 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk" and chunk.model == MODEL_ID
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return {"text": "".join(pieces), "finish_reason": finish, "usage": usage, "roles": roles, "chunks": chunks}


CONVERSATIONS = {
    "text": [user("what is the capital of france")],
    "audio": [user((CLIP_A, "wav"))],
    "audio+text": [user((CLIP_B, "wav"), "transcribe the speech")],
    "text+audio": [user("please answer the question", (CLIP_C, "wav"))],
    "two clips": [user((CLIP_A, "wav"), (CLIP_B, "wav"), "hello")],
    "system": [{"role": "system", "content": "answer in one sentence"}, user((CLIP_C, "wav"))],
    "multi-turn": [
        {"role": "developer", "content": "be brief"},
        user((CLIP_A, "wav"), "transcribe the speech"),
        {"role": "assistant", "content": "the quick brown fox"},
        user("and what is the capital of france"),
    ],
    "multi-turn audio": [
        user("hello world"),
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        user((CLIP_B, "wav")),
    ],
}


# ----------------------------------------------------------------------------------------------- basics


def test_health_and_models(served):
    health = served.health()
    assert health["status"] == "ok" and health["model"] == MODEL_ID and health["max_batch"] == 8
    client = served.client()
    assert [m.id for m in client.models.list()] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_answers_match_generate(served, name):
    messages = CONVERSATIONS[name]
    result = ask(served.client(), messages, max_tokens=10)
    assert result.object == "chat.completion" and result.id.startswith("chatcmpl-") and result.model == MODEL_ID
    (choice,) = result.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == direct_answer(served, messages, 10)
    assert choice.finish_reason in ("stop", "length")
    inputs = served.processor.apply_chat_template(processor_messages(messages), add_generation_prompt=True)
    assert result.usage.prompt_tokens == int(inputs["attention_mask"].sum())  # audio tokens included
    assert 1 <= result.usage.completion_tokens <= 10
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert (choice.finish_reason == "length") == (result.usage.completion_tokens == 10)


def test_a_conversation_continues_from_its_cache(served):
    """Each turn resends the whole conversation; the server prefills only the new turn and answers as a full
    prefill does."""
    messages = [user((CLIP_C, "wav"), "what is this")]
    before = served.health()["conversation_reuse"]
    for turn in range(3):
        answer = ask(served.client(), messages, max_tokens=6).choices[0].message.content
        assert answer == direct_answer(served, messages, 6)
        messages = messages + [{"role": "assistant", "content": answer}, user((CLIP_A if turn % 2 else CLIP_B, "wav"))]
    after = served.health()["conversation_reuse"]
    prompts = after["prompt_tokens"] - before["prompt_tokens"]
    reused = after["reused_tokens"] - before["reused_tokens"]
    first_prompt = int(served.processor.apply_chat_template(processor_messages(messages[:1]), add_generation_prompt=True)["input_ids"].shape[1])
    assert reused > first_prompt  # turns 2 and 3 took at least the whole first turn from the cache
    assert reused < prompts


def test_audio_changes_the_answer(served):
    client = served.client()
    answers = {name: ask(client, CONVERSATIONS[name], max_tokens=10).choices[0].message.content
               for name in ("text", "audio", "audio+text", "text+audio")}  # fmt: skip
    assert all(answers.values())
    assert len(set(answers.values())) > 1, answers


def test_audio_formats(served):
    """wav, flac and ogg (and mp3 where libsndfile writes it) decode; lossless formats give the wav answer."""
    samples = tone(1.0, seed=5)
    formats = ["wav", "flac", "ogg"] + (["mp3"] if "MP3" in soundfile.available_formats() else [])
    answers = {}
    for fmt in formats:
        data = encode_audio(samples, fmt, subtype="PCM_16" if fmt in ("wav", "flac") else None)
        answers[fmt] = ask(served.client(), [user((data, fmt), "transcribe the speech")]).choices[0].message.content
    assert answers["flac"] == answers["wav"]
    # an 8 kHz stereo clip is resampled and mixed down, and a data URL prefix is accepted
    stereo = np.stack([tone(1.0, 8000), tone(1.0, 8000, freq=220.0)], axis=1)
    data_url = "data:audio/wav;base64," + encode_audio(stereo, sampling_rate=8000)
    assert ask(served.client(), [user((data_url, "wav"))]).choices[0].finish_reason in ("stop", "length")


# ----------------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("name", ["text", "audio+text", "multi-turn"])
def test_streaming_equals_non_streaming(served, name):
    client = served.client()
    messages = CONVERSATIONS[name]
    whole = ask(client, messages, max_tokens=16)
    streamed = ask_streaming(client, messages, max_tokens=16)
    assert streamed["text"] == whole.choices[0].message.content
    assert streamed["finish_reason"] == whole.choices[0].finish_reason
    assert streamed["roles"] == ["assistant"]
    assert streamed["usage"].model_dump() == whole.usage.model_dump()


def test_sse_wire_format(served):
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body(CONVERSATIONS["audio"], stream=True), timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert len({c["id"] for c in chunks}) == 1


# ----------------------------------------------------------------------------------------------- generation options


def stop_candidate(answer: str) -> str | None:
    """A plain character whose first occurrence is past the first third of `answer` (random weights answer mostly in
    stray bytes), or None."""
    for i in range(len(answer) // 3, len(answer) - 1):
        if answer[i].isascii() and answer[i].isalnum() and answer.find(answer[i]) == i:
            return answer[i]
    return None


def test_max_tokens_and_stop(served):
    client = served.client()
    # the first conversation whose answer has a usable stop string
    for messages in CONVERSATIONS.values():
        whole = ask(client, messages, max_tokens=24)
        long = whole.choices[0].message.content
        stop = stop_candidate(long)
        if stop is not None:
            break
    assert stop is not None, "no answer has a plain character to stop on"
    short = ask(client, messages, max_tokens=3)
    assert short.usage.completion_tokens <= 3 < whole.usage.completion_tokens
    assert long.startswith(short.choices[0].message.content.removesuffix("\ufffd"))
    expected = long[: long.find(stop)].strip()
    cut = ask(client, messages, max_tokens=24, stop=[stop, "never-generated"])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < whole.usage.completion_tokens  # generation stopped early, not just the text
    assert ask_streaming(client, messages, max_tokens=24, stop=stop)["text"] == expected
    # max_completion_tokens is max_tokens' newer name; the default applies when neither is given
    newer = client.chat.completions.create(model=MODEL_ID, messages=messages, max_completion_tokens=3)
    assert newer.choices[0].message.content == short.choices[0].message.content
    default = client.chat.completions.create(model=MODEL_ID, messages=messages)
    assert default.usage.completion_tokens <= LIMITS["default_max_tokens"]


def test_seeded_sampling_is_reproducible(served):
    client = served.client()
    messages = CONVERSATIONS["audio"]
    first = ask(client, messages, max_tokens=12, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    again = ask(client, messages, max_tokens=12, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    assert first == again
    explicit_greedy = ask(client, messages, max_tokens=12, temperature=0).choices[0].message.content
    assert explicit_greedy == direct_answer(served, messages, 12)


# ----------------------------------------------------------------------------------------------- bad requests

ZERO_FRAMES = encode_audio(np.zeros(0, dtype=np.float32))
TOO_LONG = encode_audio(tone(LIMITS["max_audio_seconds"] + 1.0))
LONGISH = encode_audio(tone(LIMITS["max_request_audio_seconds"] / 2 + 0.5))
NOT_AUDIO = base64.b64encode(b"this is certainly not an audio file " * 40).decode()
PART = "messages.0.content.0"

# (id, request body, status, error code, error param, a substring of the message)
BAD_REQUESTS = [
    ("invalid base64", body([user(("@@ not base64 @@", "wav"))]), 400, "invalid_base64", f"{PART}.input_audio.data", "base64"),
    ("not audio", body([user((NOT_AUDIO, "wav"))]), 400, "invalid_audio", f"{PART}.input_audio.data", "could not be decoded"),
    ("unknown format", body([user((CLIP_A, "aac"))]), 400, None, f"{PART}.input_audio.format", "'wav'"),
    ("empty data", body([user(("", "wav"))]), 400, "empty_audio", f"{PART}.input_audio.data", "empty"),
    ("zero-frame wav", body([user((ZERO_FRAMES, "wav"))]), 400, "empty_audio", f"{PART}.input_audio.data", "empty"),
    ("too long clip", body([user((TOO_LONG, "wav"))]), 400, "audio_too_long", f"{PART}.input_audio.data", "--max-audio-seconds 4"),
    ("too much audio", body([user((LONGISH, "wav"), (LONGISH, "wav"))]), 400, "audio_too_long", "messages.0.content.1",
     "--max-request-audio-seconds 6"),
    ("max_tokens over limit", body([user("hello")], max_tokens=49), 400, "max_tokens_too_large", "max_tokens",
     "--max-tokens-limit 48"),
    ("max_completion_tokens over limit", {"model": MODEL_ID, "messages": [user("hi")], "max_completion_tokens": 1000}, 400,
     "max_tokens_too_large", "max_completion_tokens", "--max-tokens-limit 48"),
    ("max_tokens zero", body([user("hello")], max_tokens=0), 400, None, "max_tokens", "greater than or equal to 1"),
    ("no user turn", body([{"role": "system", "content": "be brief"}]), 400, "no_user_message", "messages", "no user message"),
    ("only assistant", body([{"role": "assistant", "content": "hi"}]), 400, "no_user_message", "messages", "user"),
    ("no messages", body([]), 400, None, "messages", "at least 1"),
    ("missing messages", {"model": MODEL_ID}, 400, "missing", "messages", "Field required"),
    ("missing audio data", body([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"format": "wav"}}]}]),
     400, "missing", f"{PART}.input_audio.data", "Field required"),
    ("missing text", body([{"role": "user", "content": [{"type": "text"}]}]), 400, "missing", f"{PART}.text", "required"),
    ("missing role", body([{"content": "hi"}]), 400, "missing", "messages.0.role", "required"),
    ("extra field", body([user("hello")], tools=[{"type": "function"}]), 400, "extra_forbidden", "tools", "'tools'"),
    ("extra part field", body([{"role": "user", "content": [{"type": "text", "text": "hi", "cache": True}]}]), 400,
     "extra_forbidden", f"{PART}.cache", "'cache'"),
    ("unknown part type", body([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400,
     None, PART, "image_url"),
    ("unknown role", body([{"role": "tool", "content": "hi"}]), 400, None, "messages.0.role", "'user'"),
    ("max_tokens as string", body([user("hello")], max_tokens="5"), 400, "int_type", "max_tokens", "integer"),
    ("temperature as string", body([user("hello")], temperature="hot"), 400, None, "temperature", "number"),
    ("temperature too high", body([user("hello")], temperature=3), 400, None, "temperature", "2"),
    ("stream as string", body([user("hello")], stream="yes"), 400, "bool_type", "stream", "boolean"),
    ("messages as string", {"model": MODEL_ID, "messages": "hello"}, 400, None, "messages", "list"),
    ("content as number", body([{"role": "user", "content": 5}]), 400, None, "messages.0.content", "string"),
    ("stop not strings", body([user("hello")], stop=[1, 2]), 400, None, "stop.0", "string"),
    ("n = 2", body([user("hello")], n=2), 400, "unsupported_value", "n", "n = 2"),
    ("stream_options without stream", body([user("hello")], stream_options={"include_usage": True}), 400, None,
     "stream_options", "stream"),
    ("audio in an assistant turn", body([user("hi"), {"role": "assistant", "content": [audio_part(CLIP_A)]}, user("ok")]), 400,
     None, "messages.1.content.0", "user messages"),
    ("audio placeholder typed", body([user("hi <|audio|> there")]), 400, None, f"{PART}.text", "placeholder"),
    ("unknown model", {**body([user("hello")]), "model": "gpt-4o"}, 404, "model_not_found", "model", "gpt-4o"),
]


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None,
                        substring: str | None = None) -> dict:  # fmt: skip
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] in ("invalid_request_error", "rate_limit_error", "authentication_error")
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    if substring is not None:
        assert substring in error["message"], error
    return error


@pytest.mark.parametrize(("request_body", "status", "code", "param", "substring"), [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])  # fmt: skip
def test_bad_requests_are_4xx_with_an_openai_error(served, request_body, status, code, param, substring):
    assert_openai_error(served.post(request_body), status, code, param, substring)
    assert served.health()["status"] == "ok"


@pytest.mark.parametrize(
    ("content", "headers", "substring"),
    [
        (b"{not json", {"content-type": "application/json"}, "not valid JSON"),
        (b"[1, 2, 3]", {"content-type": "application/json"}, "object"),
        (b"", {"content-type": "application/json"}, "JSON body"),
        (b"\xff\xfe\x00garbage", {"content-type": "application/json"}, None),
        (b"messages=hello", {"content-type": "application/x-www-form-urlencoded"}, None),
    ],
    ids=["invalid json", "json array", "empty body", "not utf-8", "form"],
)
def test_malformed_bodies(served, content, headers, substring):
    response = served.post(content=content, headers=headers)
    assert_openai_error(response, 400, substring=substring)


def test_body_too_large(served):
    limit = int(LIMITS["max_body_mb"] * 1024 * 1024)
    big = body([user("x" * (limit + 10))])
    assert_openai_error(served.post(big), 400, "body_too_large", substring="--max-body-mb 0.5")
    # without Content-Length (chunked): cut off once the limit is crossed
    payload = json.dumps(big).encode()
    chunks = (payload[i : i + 65536] for i in range(0, len(payload), 65536))
    response = httpx.post(f"{served.url}/v1/chat/completions", content=chunks, headers={"content-type": "application/json"}, timeout=60)
    assert_openai_error(response, 400, "body_too_large", substring="--max-body-mb 0.5")
    assert served.health()["status"] == "ok"


def test_errors_through_the_openai_client(served):
    client = served.client()
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, [user("hello")], max_tokens=10_000)
    assert info.value.code == "max_tokens_too_large" and info.value.param == "max_tokens"
    assert "--max-tokens-limit" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, [user(("AAAA", "wav"))])
    assert info.value.code == "invalid_audio"
    with pytest.raises(openai.BadRequestError) as info:
        ask_streaming(client, [user((TOO_LONG, "wav"))])  # refused before the stream starts
    assert info.value.code == "audio_too_long"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[user("hello")])
    response = httpx.get(f"{served.url}/v1/does-not-exist", timeout=30)
    assert_openai_error(response, 404)


# ----------------------------------------------------------------------------------------------- API key


def test_api_key(served_with_key):
    served = served_with_key
    messages = CONVERSATIONS["text"]
    with pytest.raises(openai.AuthenticationError) as info:
        ask(served.client(api_key="sk-wrong"), messages)
    assert info.value.code == "invalid_api_key"
    missing = served.post(body(messages))
    assert_openai_error(missing, 401, "invalid_api_key", substring="Missing API key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_openai_error(httpx.get(f"{served.url}/v1/models", timeout=30), 401, "invalid_api_key")
    assert_openai_error(served.post(body(messages), headers={"Authorization": "Basic sk-test-secret"}), 401)
    # the key is checked before the body is read: an over-large body without a key is a 401, not a 400
    assert served.post(body([user("x" * 1_000_000)])).status_code == 401
    good = served.client(api_key="sk-test-secret")
    assert ask(good, messages).choices[0].message.content == direct_answer(served, messages, 8)
    assert [m.id for m in good.models.list()] == [MODEL_ID]
    assert httpx.get(f"{served.url}/health", timeout=30).status_code == 200  # health needs no key


# ----------------------------------------------------------------------------------------------- batching and load


def test_queued_requests_share_one_generate(served, gate):
    """Requests waiting while the model is busy run as one batch, and each gets its one-by-one answer."""
    names = ["text", "audio", "audio+text", "two clips", "multi-turn"]
    sizes = {name: 6 + i for i, name in enumerate(names)}  # each row stops at its own max_tokens
    expected = {name: ask(served.client(), CONVERSATIONS[name], sizes[name]).choices[0].message.content for name in names}
    g = gate(served.engine)
    results = {}

    def send(key: str, name: str, max_tokens: int) -> None:
        results[key] = ask(served.client(), CONVERSATIONS[name], max_tokens)

    blocker = threading.Thread(target=send, args=("blocker", "text", 4))
    blocker.start()
    wait_until(lambda: served.health()["running"] == 1, "the first request to reach the model")
    threads = [threading.Thread(target=send, args=(name, name, sizes[name])) for name in names]
    for thread in threads:
        thread.start()
    wait_until(lambda: served.health()["queued"] == len(names), "all requests to be queued")
    g.open()
    for thread in [blocker, *threads]:
        thread.join(120)
    assert g.calls == [1, len(names)]
    for name in names:
        assert results[name].choices[0].message.content == expected[name], name
        assert results[name].usage.completion_tokens <= sizes[name]


def test_load_16_clients(served):
    """16 clients x 4 requests at once: every request answered, each as when sent alone; the server stays healthy."""
    names = list(CONVERSATIONS)
    plan = [(client, request, names[(client + request) % len(names)], 4 + (client * 4 + request) % 9)
            for client in range(16) for request in range(4)]  # fmt: skip
    single = {}
    for _, _, name, max_tokens in plan:
        if (name, max_tokens) not in single:
            single[name, max_tokens] = ask(served.client(), CONVERSATIONS[name], max_tokens).choices[0].message.content
    before = served.engine.stats["requests"]

    def run_client(client_index: int) -> list[tuple[str, int, str]]:
        client = served.client()
        answers = []
        for index, request, name, max_tokens in plan:
            if index == client_index:
                answers.append((name, max_tokens, ask(client, CONVERSATIONS[name], max_tokens).choices[0].message.content))
        return answers

    with ThreadPoolExecutor(16) as pool:
        answered = [answer for answers in pool.map(run_client, range(16)) for answer in answers]
    assert len(answered) == 64
    for name, max_tokens, text in answered:
        assert text == single[name, max_tokens], (name, max_tokens)
    assert served.engine.stats["requests"] - before == 64
    health = served.health()
    assert health["status"] == "ok" and health["queued"] == 0 and health["running"] == 0
    assert ask(served.client(), CONVERSATIONS["text"]).choices[0].message.content == direct_answer(served, CONVERSATIONS["text"], 8)


def test_full_queue_is_answered_429(served_tiny_queue, gate):
    served = served_tiny_queue
    g = gate(served.engine)
    messages = CONVERSATIONS["audio"]
    results = {}

    def send(name: str) -> None:
        results[name] = served.post(body(messages, max_tokens=5))

    threads = [threading.Thread(target=send, args=("running",))]
    threads[0].start()
    wait_until(lambda: served.health()["running"] == 1, "the first request to reach the model")
    for name in ("queued 1", "queued 2"):
        threads.append(threading.Thread(target=send, args=(name,)))
        threads[-1].start()
    wait_until(lambda: served.health()["queued"] == 2, "two queued requests")
    refused = served.post(body(messages, max_tokens=5), timeout=20)  # a queued request would wait for the gate
    error = assert_openai_error(refused, 429, "queue_full", substring="--max-queue 2")
    assert error["type"] == "rate_limit_error" and refused.headers["retry-after"] == "1"
    assert_openai_error(served.post(body(messages, max_tokens=5, stream=True)), 429, "queue_full")
    with pytest.raises(openai.RateLimitError):
        ask(served.client(), messages, max_tokens=5)
    assert served.health()["queued"] == 2  # refused requests were never queued
    g.open()
    for thread in threads:
        thread.join(120)
    texts = {name: response.json()["choices"][0]["message"]["content"] for name, response in results.items()}
    assert set(texts) == {"running", "queued 1", "queued 2"} and len(set(texts.values())) == 1
    assert texts["running"] == direct_answer(served, messages, 5)
    assert served.health()["status"] == "ok" and served.health()["queued"] == 0
    assert ask(served.client(), messages, max_tokens=5).choices[0].message.content == texts["running"]


def test_in_flight_requests_are_bounded_before_their_bodies_are_read(served_one_slot):
    """Slow uploads count too: with max_queue 1 + max_batch 1, two requests still sending their bodies fill the
    server, and a third is refused at once instead of being buffered."""
    served = served_one_slot
    payload = json.dumps(body(CONVERSATIONS["audio"], max_tokens=5)).encode()
    release, results = threading.Event(), {}

    def slow_body():
        yield payload[:100]
        release.wait(60)
        yield payload[100:]

    def upload(name: str) -> None:
        results[name] = served.post(content=slow_body(), headers={"content-type": "application/json"})

    threads = [threading.Thread(target=upload, args=(f"slow {i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: served.health()["in_flight"] == 2, "two uploads in flight")
        assert served.health()["max_in_flight"] == 2 and served.health()["queued"] == 0
        refused = served.post(body(CONVERSATIONS["text"]), timeout=20)
        assert_openai_error(refused, 429, "queue_full", substring="--max-queue 1")
    finally:
        release.set()
        for thread in threads:
            thread.join(60)
    assert [results[f"slow {i}"].status_code for i in range(2)] == [200, 200]
    assert served.health()["in_flight"] == 0
    assert ask(served.client(), CONVERSATIONS["text"]).choices[0].finish_reason in ("stop", "length")


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_serves_a_saved_model(tiny_model, served, tmp_path):
    from modeling_llasm.cli import COMMANDS
    from modeling_llasm.cli import serve as serve_cli
    from modeling_llasm.serving.models import is_loopback

    assert COMMANDS["serve"][0] == "serve"
    model, processor = tiny_model
    directory = tmp_path / "my-llasm"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args([str(directory), "--api-key", "k", "--max-batch", "4", "--max-tokens-limit", "32"])
    assert args.host == "127.0.0.1"  # this machine only unless asked
    app, chosen = serve_cli.build_app(args, log=lambda line: None)
    settings = app.state.settings
    assert chosen == directory and settings.model_id == "my-llasm"
    assert (settings.api_key, settings.max_batch, settings.max_tokens_limit) == ("k", 4, 32)
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["my-llasm"]
        messages = CONVERSATIONS["audio+text"]
        answer = client.chat.completions.create(model="my-llasm", messages=messages, max_tokens=8)
    assert answer.choices[0].message.content == ask(served.client(), messages, 8).choices[0].message.content
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(FileNotFoundError):
        serve_cli.build_app(parser.parse_args([str(tmp_path / "missing")]), log=lambda line: None)


# ----------------------------------------------------------------------------------------------- failures


def test_generation_failure_is_a_500_and_the_worker_survives(served, monkeypatch):
    def broken(jobs):
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(served.engine, "generate", broken)
    messages = CONVERSATIONS["audio"]
    with pytest.raises(openai.InternalServerError) as info:
        ask(served.client(), messages)
    assert info.value.code == "generation_failed" and "out of cheese" in info.value.message
    with pytest.raises(openai.APIError, match="out of cheese"):  # in a stream: an error event, then [DONE]
        ask_streaming(served.client(), messages)
    monkeypatch.undo()
    assert served.health()["status"] == "ok"
    assert ask(served.client(), messages).choices[0].message.content == direct_answer(served, messages, 8)


def test_a_dropped_stream_cancels_its_generation(served, gate, monkeypatch):
    submitted = []
    real_submit = served.engine.submit
    monkeypatch.setattr(served.engine, "submit", lambda job: (submitted.append(job), real_submit(job))[1])
    g = gate(served.engine)  # holds the generation, so that it cannot end before the client leaves
    request = body(CONVERSATIONS["audio+text"], max_tokens=48, stream=True)
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=request, timeout=60) as response:
        first = next(line for line in response.iter_lines() if line)  # the role chunk comes before any generation
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
    assert len(submitted) == 1  # queued before the response started
    g.open()  # at the latest, the stream's first text chunk cannot be sent: the server cancels the row
    wait_until(lambda: submitted[0].cancelled.is_set(), "the dropped stream to be cancelled")
    wait_until(lambda: served.health()["running"] == 0 and served.health()["queued"] == 0, "the worker to be idle")
    messages = CONVERSATIONS["audio+text"]
    assert ask(served.client(), messages).choices[0].message.content == direct_answer(served, messages, 8)


# ----- POST /v1/audio/transcriptions -----


def transcribe(served, files: dict | None = None, data: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(f"{served.url}/v1/audio/transcriptions", files=files, data=data, timeout=120, **kwargs)


def test_transcriptions_answer_the_processors_transcription_request(served):
    from modeling_llasm.serving.app import TRANSCRIPT_TOKENS_BASE, TRANSCRIPT_TOKENS_PER_SECOND

    raw = base64.b64decode(CLIP_C)
    result = served.client().audio.transcriptions.create(model=MODEL_ID, file=("q.wav", raw, "audio/wav"))
    usage = result.usage
    assert usage.output_tokens <= TRANSCRIPT_TOKENS_BASE + TRANSCRIPT_TOKENS_PER_SECOND * 2.0  # bounded by the clip's length
    inputs = served.processor.apply_transcription_request(raw)
    assert usage.input_tokens == inputs["input_ids"].shape[1]
    out = served.model.generate(**inputs, max_new_tokens=usage.output_tokens, do_sample=False)
    expected = served.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert result.text == expected
    as_text = served.client().audio.transcriptions.create(model=MODEL_ID, file=("q.wav", raw), response_format="text", language="en")
    assert as_text == expected
    assert served.health()["status"] == "ok"


WAV_C = base64.b64decode(CLIP_C)
TRANSCRIPTION_ERRORS = [
    ("unknown model", {"file": ("q.wav", WAV_C)}, {"model": "whisper-1"}, 404, "model_not_found", "model", "whisper-1"),
    ("prompt", {"file": ("q.wav", WAV_C)}, {"prompt": "Names: Anna"}, 400, "unsupported_value", "prompt", "prompt"),
    ("language", {"file": ("q.wav", WAV_C)}, {"language": "fr"}, 400, "unsupported_value", "language", "'fr'"),
    ("response format", {"file": ("q.wav", WAV_C)}, {"response_format": "srt"}, 400, "unsupported_value", "response_format", "srt"),
    ("temperature", {"file": ("q.wav", WAV_C)}, {"temperature": "hot"}, 400, None, "temperature", "number"),
    ("unknown field", {"file": ("q.wav", WAV_C)}, {"timestamp_granularities": "word"}, 400, None, "timestamp_granularities", "Unknown"),
    ("no file", None, {"model": MODEL_ID}, 400, "missing_file", "file", "'file'"),
    ("file as text", None, {"file": "hello"}, 400, "missing_file", "file", "'file'"),
    ("not audio", {"file": ("q.wav", b"not audio at all")}, None, 400, "invalid_audio", "file", "decoded"),
    ("empty file", {"file": ("q.wav", b"")}, None, 400, "empty_audio", "file", "empty"),
    ("too long", {"file": ("q.wav", base64.b64decode(encode_audio(tone(5.0))))}, None, 400, "audio_too_long", "file",
     "--max-audio-seconds"),
]


@pytest.mark.parametrize(("files", "data", "status", "code", "param", "substring"), [case[1:] for case in TRANSCRIPTION_ERRORS],
                         ids=[case[0] for case in TRANSCRIPTION_ERRORS])  # fmt: skip
def test_bad_transcription_requests_are_4xx_with_an_openai_error(served, files, data, status, code, param, substring):
    assert_openai_error(transcribe(served, files, data), status, code, param, substring)
    assert served.health()["status"] == "ok"


def test_transcriptions_need_a_form(served):
    response = httpx.post(f"{served.url}/v1/audio/transcriptions", json={"file": CLIP_C}, timeout=60)
    assert_openai_error(response, 400, substring="'file'")


def test_transcriptions_read_in_the_language_asked(served_multilingual):
    """`language` (OpenAI's field) makes a multilingual reader read in it; one it does not know is a 400."""
    served = served_multilingual
    raw = base64.b64decode(encode_audio(tone(1.2)))
    for language in ("zh", "en"):
        result = served.client().audio.transcriptions.create(model=MODEL_ID, file=("q.wav", raw), language=language)
        inputs = served.processor.apply_transcription_request(raw, language=language)
        out = served.model.generate(**inputs, max_new_tokens=result.usage.output_tokens, do_sample=False)
        assert result.text == served.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert_openai_error(transcribe(served, {"file": ("q.wav", raw)}, {"language": "fr"}), 400, "unsupported_value", "language",
                        "['en', 'zh']")  # fmt: skip
    assert served.health()["status"] == "ok"


@pytest.mark.parametrize("adaptor", ["stack_mlp", "whisper_reader"])
def test_serve_and_demo_load_a_saved_model_in_bfloat16(adaptor, tmp_path):
    """`llasm serve --dtype bfloat16` and the demo's loading (`load_chat_pipeline(..., dtype="bfloat16")`) run the model
    in bf16 on any CPU: a spoken question and a transcription are answered (issue 23)."""
    import torch

    from modeling_llasm.cli import serve as serve_cli
    from modeling_llasm.cli.chat import load_chat_pipeline
    from tiny_llasm import build_tiny_llasm, reader_llasm

    model, processor = reader_llasm() if adaptor == "whisper_reader" else build_tiny_llasm()
    directory = tmp_path / "bf16-llasm"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    app, _ = serve_cli.build_app(parser.parse_args([str(directory), "--dtype", "bfloat16"]), log=lambda line: None)
    assert {p.dtype for p in app.state.engine.model.parameters() if p.is_floating_point()} == {torch.bfloat16}
    raw = base64.b64decode(encode_audio(speechlike(1.2, 3)))
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="bf16-llasm", messages=CONVERSATIONS["audio+text"], max_tokens=4)
        transcript = client.audio.transcriptions.create(model="bf16-llasm", file=("q.wav", raw))
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens >= 1
    assert isinstance(transcript.text, str)
    chat = load_chat_pipeline(str(directory), dtype="bfloat16")
    assert chat.model.dtype == torch.bfloat16
    assert isinstance(chat({"audio": speechlike(1.2, 3), "text": "hello"}, max_new_tokens=3)["generated_text"], str)


@pytest.mark.parametrize("fast", ["1", "0"])
def test_serve_defaults_to_bfloat16_where_bf16_is_faster(fast, tmp_path, monkeypatch):
    """`llasm serve` without --dtype (auto): bfloat16 where this machine computes it faster, else float32, and
    /health says which; both machines forced with LLASM_FAST_BF16 (the same path on every CPU)."""
    from modeling_llasm.cli import serve as serve_cli
    from tiny_llasm import build_tiny_llasm

    monkeypatch.setenv("LLASM_FAST_BF16", fast)
    model, processor = build_tiny_llasm()
    directory = tmp_path / "auto-llasm"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    app, _ = serve_cli.build_app(parser.parse_args([str(directory)]), log=lambda line: None)
    dtype = "bfloat16" if fast == "1" else "float32"
    with BackgroundServer(app) as server:
        assert httpx.get(f"{server.url}/health", timeout=30).json()["dtype"] == dtype
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="auto-llasm", messages=CONVERSATIONS["audio+text"], max_tokens=4)
    assert answer.usage.completion_tokens >= 1
