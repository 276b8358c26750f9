"""Paths and small builders shared by the workload tests."""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_AZURE_CSV = SHARED_DATA / "azure_llm_inference_conv_2023.csv"
#: The workspace's shared copy when there is one, else the copy packaged in ``workload``
#: (gzip; the loader and pandas read both): a clean clone elsewhere has no ../shared.
AZURE_CSV = SHARED_AZURE_CSV if SHARED_AZURE_CSV.is_file() else (
    REPO / "workload" / "data" / "azure_llm_inference_conv_2023.csv.gz")
WILDCHAT_DIR = REPO / "tests" / "fixtures" / "wildchat"
WILDCHAT_PARQUET = WILDCHAT_DIR / "wildchat_sample.parquet"
WILDCHAT_JSONL = WILDCHAT_DIR / "wildchat_sample.jsonl"


def write_sharegpt(path: Path, conversations: list[list[tuple[str, str]]]) -> Path:
    """A small ShareGPT-format file: each conversation a list of (from, value)."""
    records = [
        {"id": f"conv{i}", "conversations": [{"from": f, "value": v} for f, v in conv]}
        for i, conv in enumerate(conversations)
    ]
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


def equality_structure(chains) -> list[tuple[int, ...]]:
    """Each hash replaced by the order of its first appearance: two lists of chains have
    the same sharing structure (which blocks are equal to which) iff these are equal."""
    label: dict[int, int] = {}
    return [tuple(label.setdefault(int(h), len(label)) for h in chain) for chain in chains]
