"""Plain helpers several test files share (fixtures live in conftest.py): instruction records, JSONL files, configs."""

from __future__ import annotations

import json
from pathlib import Path

from loratune.config import AdapterSpec, DataSpec, ModelSpec, RunConfig, TrainSpec


def sum_records(a_values: range, b_values: range, answer: str = "Arr, matey! It be {}.") -> list[dict]:
    """'What is a plus b?' instruction records, one per (a, b), answered with `answer` around the sum."""
    return [
        {"instruction": f"What is {a} plus {b}?", "output": answer.format(a + b)} for a in a_values for b in b_values
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run_config(model: Path, data: Path, name: str, adapter: AdapterSpec, **train) -> RunConfig:
    """A run of `model` on the data file `data`, with the given adapter and TrainSpec options."""
    return RunConfig(
        name=name,
        model=ModelSpec(source=str(model)),
        adapter=adapter,
        data=DataSpec(path=str(data)),
        train=TrainSpec(**train),
    )
