import json
from pathlib import Path

import pytest


@pytest.fixture
def write_jsonl(tmp_path):
    def write(name: str, records: list) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        return path

    return write
