"""hack/bench_operator.py --write-docs replaces the operator section's table and keeps the notes under it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "hack" / "bench_operator.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_operator", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOC = """# Benchmarks

## Trainer

trainer text

## Operator: FineTuneJob controller (old date)

Command: old

| What | Measured |
|---|---|
| RSS | 221.0 MiB |

Notes (by hand):
- **Memory after a restart**: what was found.

## Later section

later text
"""

NEW = """## Operator: FineTuneJob controller (new date)

Command: new

| What | Measured |
|---|---|
| RSS | 160.0 MiB |
"""


def test_the_table_is_replaced_and_the_notes_kept():
    out = load_bench().replace_operator_table(DOC, NEW)
    assert "221.0" not in out and "old date" not in out and "Command: old" not in out
    assert "| RSS | 160.0 MiB |\n\nNotes (by hand):\n- **Memory after a restart**" in out
    assert out.startswith(
        "# Benchmarks\n\n## Trainer\n\ntrainer text\n\n## Operator: FineTuneJob controller (new"
    )
    assert out.endswith("## Later section\n\nlater text\n")


def test_a_document_without_the_section_gets_it_appended():
    out = load_bench().replace_operator_table("# Benchmarks\n", NEW)
    assert out == "# Benchmarks\n\n" + NEW
