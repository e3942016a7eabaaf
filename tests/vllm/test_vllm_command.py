"""`llasm serve --engine vllm`'s command line (no vLLM needed)."""

from __future__ import annotations

from modeling_llasm.serving.vllm_server import vllm_command, vllm_environment


def test_command_line():
    command = vllm_command("/models/x", python="/venv/bin/python", port=9000, api_key="k", extra=["--tensor-parallel-size", "2"])
    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    for flag in ("--enforce-eager", "--interleave-mm-strings"):
        assert flag in command
    assert command[command.index("--override-generation-config") + 1] == '{"temperature": 0.0}'
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--api-key") + 1] == "k"
    assert command[-2:] == ["--tensor-parallel-size", "2"] and command[command.index("--served-model-name") + 1] == "x"


def test_environment_never_mixes_the_two_venvs():
    env = vllm_environment({"PYTHONPATH": "/somewhere", "PATH": "/bin"})
    assert "PYTHONPATH" not in env and env["VLLM_TARGET_DEVICE"] == "cpu" and env["PATH"] == "/bin"
