"""A local Gradio page to talk to a LLaSM model: record with the microphone or upload a clip, optionally type text,
and read the answer as it is generated. Earlier turns (their audio included) stay in the conversation until cleared.

The conversation logic (`user_message`, `stream_answer`, `chatbot_messages`, `describe_model`) does not import
Gradio, so it can be tested and reused without it; `build_demo` and `launch_demo` do.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


# Shown in place of an answer that decoded to nothing (the model ended at once), so a turn never looks lost.
EMPTY_ANSWER = "*(no answer: the model ended its reply at once)*"
ELEM_IDS = {"model": "model-info", "chatbot": "chatbot", "audio": "audio-input", "text": "text-input", "send": "send", "clear": "clear",
            "talk": "talk-input", "latency": "first-word"}  # fmt: skip

Conversation = list[dict[str, Any]]


@dataclass(frozen=True)
class ModelInfo:
    """What the page says about the loaded model. `kind`: "base" (an embedded base: untrained), "trained" (a
    finished recipe run: `summary.json` next to it) or "unknown" (no training summary)."""

    path: Path
    kind: str
    summary: dict[str, Any] | None = None
    adaptor_type: str | None = None  # from the model's config.json, when readable

    @property
    def name(self) -> str:
        # a recipe model is `<run>/final`: the run's name says more than "final"
        return f"{self.path.parent.name}/{self.path.name}" if self.path.name == "final" else self.path.name

    @property
    def notice(self) -> str:
        """Markdown: the model's name and path, and whether (and how well) it was trained."""
        header = f"**Model:** `{self.name}` — `{self.path}`"
        if self.kind == "base" and self.adaptor_type == "whisper_reader":
            return (
                f"{header}\n\n**The embedded base** (`whisper_reader` adaptor): it needs no training. The frozen Whisper "
                "decoder reads what was said and hands the LLM the words; the LLM answers as if they were typed."
            )
        if self.kind == "base":
            return (
                f"{header}\n\n**This is the untrained base**: its audio adaptor is freshly initialised, so answers to "
                "spoken questions are unrelated to what was said (typed questions go to the base LLM). Train it with "
                "`llasm train --recipe tiny`; `llasm demo` then loads the newest finished run."
            )
        if self.kind == "trained":
            summary = self.summary or {}
            details = [f"Trained by the recipe (run `{self.path.parent.name}`"]
            if summary.get("adaptor_type"):
                details.append(f"adaptor `{summary['adaptor_type']}`")
            if summary.get("final_heldout_wer") is not None:
                details.append(f"held-out WER {summary['final_heldout_wer']:.2f}")
            return f"{header}\n\n" + ", ".join(details) + ")."
        return f"{header}\n\nNo training summary next to this model: it may be untrained."


def describe_model(directory: str | os.PathLike) -> ModelInfo:
    """Tell the untrained embedded base (it keeps its build manifest), a finished recipe model and others apart."""
    from ..conversion.build_base import BASE_NAME, BUILD_MANIFEST

    path = Path(directory).expanduser().resolve()
    adaptor_type = None
    if (path / "config.json").is_file():
        adaptor_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("adaptor_type")
    summary_file = path.parent / "summary.json"
    if path.name == "final" and summary_file.is_file():
        return ModelInfo(path, "trained", json.loads(summary_file.read_text(encoding="utf-8")), adaptor_type)
    if (path / BUILD_MANIFEST).is_file() or path.name.startswith(BASE_NAME):
        return ModelInfo(path, "base", adaptor_type=adaptor_type)
    return ModelInfo(path, "unknown", adaptor_type=adaptor_type)


def default_demo_model() -> Path:
    """The newest finished recipe model if there is one, else the embedded base, built if missing (as `llasm serve`)."""
    import sys

    from ..serving.models import default_model_dir

    return default_model_dir(log=lambda line: print(line, file=sys.stderr))


def user_message(audio: str | os.PathLike | None, text: str | None) -> dict[str, Any]:
    """One user turn: the clip (a file path) first, then the text, as the chat template expects."""
    content: list[dict[str, Any]] = []
    if audio:
        content.append({"type": "audio", "path": str(audio)})
    if text and text.strip():
        content.append({"type": "text", "text": text.strip()})
    if not content:
        raise ValueError("Record or upload a clip, or type a message.")
    return {"role": "user", "content": content}


def chatbot_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """The Gradio Chatbot view of a conversation: each clip as a playable file, then its text."""
    view = []
    for message in conversation:
        role, content = message["role"], message["content"]
        if role == "system":
            continue
        if isinstance(content, str):
            view.append({"role": role, "content": content or (EMPTY_ANSWER if role == "assistant" else "")})
            continue
        for item in content:
            if item["type"] == "audio":
                view.append({"role": role, "content": {"path": item["path"], "mime_type": "audio/wav"}})
            elif item["type"] == "text":
                view.append({"role": role, "content": item["text"]})
    return view


def stream_answer(
    chat: Callable[..., Iterator[str]], conversation: Conversation, audio: str | None, text: str | None, **generation: Any
) -> Iterator[tuple[Conversation, list[dict[str, Any]]]]:
    """Add a user turn and stream the answer: yields `(conversation, chatbot view)`, first with the new user turn,
    then with the answer so far, last with the answer added to the conversation. `chat` is a `llasm-chat` pipeline
    (called with `stream=True`); `generation` goes to it. The input `conversation` is not changed."""
    conversation = [*conversation, user_message(audio, text)]
    view = chatbot_messages(conversation)
    yield conversation, view
    answer = ""
    for piece in chat(conversation, stream=True, **generation):
        answer += piece
        yield conversation, [*view, {"role": "assistant", "content": answer}]
    conversation = [*conversation, {"role": "assistant", "content": answer.strip()}]
    yield conversation, chatbot_messages(conversation)


def first_word_note(seconds: float, since: str) -> str:
    """The line shown under an answer: how long its first word took."""
    return f"First word {seconds * 1000:.0f} ms after {since}."


class SpokenTurn:
    """A turn spoken into the streaming microphone: its chunks go to a `LlasmAudioStream` (read and prefilled while
    the user speaks), and the answer streams when they stop. `chat`: the `llasm-chat` pipeline (its model and
    processor); `generation`: a turn's pipeline arguments (`turn_generation`)."""

    def __init__(self, chat, conversation: Conversation, conversation_cache=None, **generation: Any) -> None:
        from ..streaming_llasm import LlasmAudioStream

        generation = dict(generation)
        system_prompt, language = generation.pop("system_prompt", None), generation.pop("language", None)
        messages = chat.to_messages(conversation, None, system_prompt) if conversation else (
            [{"role": "system", "content": system_prompt}] if system_prompt else [])  # fmt: skip
        self.chat, self.conversation, self.generation = chat, conversation, generation
        self.stream = LlasmAudioStream(chat.model, chat.processor, messages, language=language,
                                       conversation_cache=conversation_cache, update_seconds=0)  # fmt: skip

    def add(self, sampling_rate: int, samples: Any) -> None:
        """One chunk from the microphone (any rate, int or float samples, mono or stereo)."""
        from ..processing_llasm import load_audio

        self.stream.append(load_audio(samples, sampling_rate=sampling_rate))

    def answer(self, clip_path: str | os.PathLike) -> Iterator[tuple[Conversation, list[dict[str, Any]], str]]:
        """End of speech: saves the clip to `clip_path` (for the conversation view), streams the answer; yields
        `(conversation, chatbot view, first-word note)`, last with the answer added to the conversation."""
        import threading

        import soundfile
        from transformers import TextIteratorStreamer

        end_of_speech = time.perf_counter()
        soundfile.write(str(clip_path), self.stream.audio, self.stream.sampling_rate)
        conversation = [*self.conversation, user_message(clip_path, None)]
        view = chatbot_messages(conversation)
        streamer = TextIteratorStreamer(self.chat.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.stream.generate(streamer=streamer, **self.generation)
            except BaseException as error:  # shown to the user by the caller
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        answer, note = "", ""
        for piece in streamer:
            if not note and piece:
                note = first_word_note(time.perf_counter() - end_of_speech, "you stopped speaking")
            answer += piece
            yield conversation, [*view, {"role": "assistant", "content": answer}], note
        worker.join()
        if failure:
            raise failure[0]
        conversation = [*conversation, {"role": "assistant", "content": answer.strip()}]
        yield conversation, chatbot_messages(conversation), note


AUTO_LANGUAGE = "detect"


def reader_languages(model) -> list[str]:
    """The languages a model's reader can be told to read in (a multilingual `whisper_reader`), else []."""
    config = model.config
    return sorted(config.reader_language_ids or []) if config.adaptor_type == "whisper_reader" else []


def turn_generation(tokens: float, temperature: float, language: str | None = None, system_prompt: str | None = None) -> dict[str, Any]:
    """The pipeline arguments of one demo turn: length, temperature, the audio's language (`AUTO_LANGUAGE` or None:
    detected per window), the system prompt."""
    from ..cli.chat import generation_kwargs

    generation = generation_kwargs(int(tokens), float(temperature))
    if language and language != AUTO_LANGUAGE:
        generation["language"] = language
    if system_prompt:
        generation["system_prompt"] = system_prompt
    return generation


def build_demo(
    chat: Callable[..., Iterator[str]],
    info: ModelInfo,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    system_prompt: str | None = None,
    languages: Sequence[str] = (),
):
    """The Gradio app (`gr.Blocks`, not launched) around a `llasm-chat` pipeline `chat`; with `languages` (a
    multilingual reader's, `reader_languages`), a choice of the audio's language (default: detected)."""
    # Before gradio is imported: no usage analytics, no version check (the demo must work offline).
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    from .. import LlasmConversationCache

    clip_dir = tempfile.mkdtemp(prefix="llasm-demo-")  # spoken turns' clips, for the conversation view

    def respond(audio: str | None, text: str | None, conversation: Conversation, tokens: float, temp: float, session: dict,
                language: str | None = None):  # fmt: skip
        sent = time.perf_counter()
        generation = turn_generation(tokens, temp, language, system_prompt)
        # this browser session's KV cache: each turn prefills only itself and encodes only its own audio
        generation["conversation_cache"] = session.setdefault("cache", LlasmConversationCache())
        try:
            answers = stream_answer(chat, conversation, audio, text, **generation)
            updated, view = next(answers)
        except ValueError as error:  # nothing recorded, uploaded or typed
            raise gr.Error(str(error)) from None
        # clear the inputs; no second submit, and no clearing (the stream would write the old turns back) meanwhile
        yield updated, view, None, "", gr.Button(interactive=False), gr.Button(interactive=False), ""
        note = ""
        try:
            for updated, view in answers:
                if not note and view[-1]["role"] == "assistant" and view[-1]["content"]:
                    note = first_word_note(time.perf_counter() - sent, "you sent the turn")
                yield updated, view, gr.skip(), gr.skip(), gr.skip(), gr.skip(), note
        except Exception as error:  # e.g. an unreadable upload: give the turn back instead of keeping half of it
            yield conversation, chatbot_messages(conversation), audio, text or "", gr.skip(), gr.skip(), ""
            raise gr.Error(f"The model could not answer: {error}") from error

    def begin_talking(conversation: Conversation, tokens: float, temp: float, session: dict, language: str | None = None) -> str:
        generation = turn_generation(tokens, temp, language, system_prompt)
        session["turn"] = SpokenTurn(chat, conversation, session.setdefault("cache", LlasmConversationCache()), **generation)
        return ""

    def hear(chunk: tuple[int, Any] | None, session: dict) -> None:
        if chunk is not None and session.get("turn") is not None:
            session["turn"].add(*chunk)

    def answer_talk(conversation: Conversation, session: dict):
        turn = session.pop("turn", None)
        if turn is None or not turn.stream.samples:
            raise gr.Error("Nothing was heard: allow the microphone and speak, then stop the recording.")
        try:
            for updated, view, note in turn.answer(Path(clip_dir) / f"spoken-{time.time_ns()}.wav"):
                yield updated, view, note
        except Exception as error:
            yield conversation, chatbot_messages(conversation), ""
            raise gr.Error(f"The model could not answer: {error}") from error

    def clear(session: dict) -> tuple[Conversation, list, None, str, str]:
        session.pop("cache", None)
        session.pop("turn", None)
        return [], [], None, "", ""

    with gr.Blocks(title="LLaSM demo", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# LLaSM: talk to a speech-language model")
        gr.Markdown(info.notice, elem_id=ELEM_IDS["model"])
        conversation = gr.State([])
        session = gr.State({})  # per browser session (Gradio copies the initial value): the conversation cache
        # no "share" button in the toolbar: it uploads to the Hugging Face Hub
        chatbot = gr.Chatbot(label="Conversation", elem_id=ELEM_IDS["chatbot"], height=420, buttons=["copy", "copy_all"])
        latency = gr.Markdown("", elem_id=ELEM_IDS["latency"])
        talk = gr.Audio(
            sources=["microphone"], streaming=True, type="numpy", elem_id=ELEM_IDS["talk"],
            label="Talk: answered when you stop (your words are read while you speak)",
        )  # fmt: skip
        with gr.Row():
            audio = gr.Audio(
                sources=["microphone", "upload"], type="filepath", label="Speak or upload a clip", elem_id=ELEM_IDS["audio"],
                buttons=["download"],  # no "share": it uploads to the Hugging Face Hub
            )  # fmt: skip
            with gr.Column():
                text = gr.Textbox(
                    label="Text (optional)", placeholder="An instruction, or a typed question", lines=2, elem_id=ELEM_IDS["text"]
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id=ELEM_IDS["send"])
                    clear_button = gr.Button("Clear conversation", elem_id=ELEM_IDS["clear"])
        with gr.Accordion("Generation", open=False):
            tokens = gr.Slider(1, 1024, value=max_new_tokens, step=1, label="Max new tokens")
            temp = gr.Slider(0.0, 2.0, value=temperature, step=0.05, label="Temperature (0 = greedy)")
            language = gr.Dropdown([AUTO_LANGUAGE, *languages], value=AUTO_LANGUAGE, label="Language of the audio",
                                   visible=bool(languages))  # fmt: skip

        submit = dict(
            fn=respond, inputs=[audio, text, conversation, tokens, temp, session, language],
            outputs=[conversation, chatbot, audio, text, send, clear_button, latency],
        )  # fmt: skip
        for trigger in (send.click, text.submit):
            # `then` runs after errors too, so the buttons are always usable again
            trigger(**submit).then(lambda: (gr.Button(interactive=True),) * 2, None, [send, clear_button])
        talk.start_recording(begin_talking, [conversation, tokens, temp, session, language], latency)
        talk.stream(hear, [talk, session], None, stream_every=0.5, time_limit=120)
        talk.stop_recording(answer_talk, [conversation, session], [conversation, chatbot, latency])
        clear_button.click(clear, session, [conversation, chatbot, audio, text, latency], queue=False)
        # the chatbot's own trash icon empties the view: forget the turns too, or the model would still see them
        chatbot.clear(clear, session, [conversation, chatbot, audio, text, latency], queue=False)
    return demo


def launch_demo(demo, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Serve `demo` locally (blocks): never shared through a tunnel, one generation at a time."""
    # Gradio checks its own URL over HTTP after starting: keep that request off any configured proxy.
    for name in ("NO_PROXY", "no_proxy"):
        os.environ[name] = ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"]))
    # the model is shared and CPU-bound: concurrent generations would only slow each other down
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False, show_error=True)
