"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), as in-tree models run them.

They come from the source distribution of the installed transformers on PyPI (`scripts/fetch_transformers_tests.sh`,
run by `scripts/install.sh`), unpacked as the package `transformers_tests` into the llasm cache, never copied here.
That distribution ships the top-level `tests/test_*.py` only; three modules they import are not in it and are
provided here (see `shims`): the export tests' mixin (not run), the generation tests' mixin (our own generation
checks, `generation_checks.py`) and the common config kwargs (read for non-composite configs only).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import transformers

from modeling_llasm.cache import llasm_cache_dir


TRANSFORMERS_TESTS = llasm_cache_dir() / "transformers-tests" / transformers.__version__


def install_shims() -> None:
    from generation_checks import LlasmGenerationChecks

    shims = {
        # transformers' torch.export tests (tests/exporters/) are not in the source distribution: not run here
        "transformers_tests.exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
        # tests/generation/test_utils.py is not in it either: the equivalent checks are our own
        "transformers_tests.generation.test_utils": {"GenerationTesterMixin": LlasmGenerationChecks},
        # only read by ConfigTester.check_config_arguments_init, which returns first for composite configs (LlasmConfig)
        "transformers_tests.utils.test_configuration_utils": {"config_common_kwargs": {}},
    }
    for name, attributes in shims.items():
        package = name.rsplit(".", 1)[0]
        if package not in sys.modules:
            sys.modules[package] = types.ModuleType(package)
            sys.modules[package].__path__ = []
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module


def collect_ignore_reason() -> str | None:
    if not (TRANSFORMERS_TESTS / "transformers_tests" / "__init__.py").is_file():
        return f"transformers' common tests are not in {TRANSFORMERS_TESTS} (bash scripts/fetch_transformers_tests.sh)"
    return None


if collect_ignore_reason() is None:
    sys.path.insert(0, str(TRANSFORMERS_TESTS))
    sys.path.insert(0, str(Path(__file__).parent))
    install_shims()


def pytest_configure(config):
    for marker in ("torch_compile_test", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "accelerate_tests", "slow"):
        config.addinivalue_line("markers", f"{marker}: a mark of transformers' common tests")
