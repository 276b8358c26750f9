"""The Azure LLM inference traces (``TIMESTAMP,ContextTokens,GeneratedTokens``), 2023 and 2024.

Azure Public Dataset: the 2023 traces from "Splitwise: Efficient Generative LLM
Inference Using Phase Splitting" (Patel et al., ISCA 2024), the 2024 week-long
ones (``AzureLLMInferenceTrace_{code,conv}_1week.csv``) from "DynamoLLM" (Stojkovic
et al., 2024), CC-BY-4.0; a copy of the 2023 conversation trace ships in
``workload/data``. The columns are the same; the timestamps differ: 2023 writes
``2023-11-16 18:15:46.6805900`` (naive, UTC, 7 fractional digits), 2024
``2024-05-10 00:00:00.009930+00:00`` and, on whole seconds,
``2024-05-12 00:00:00+00:00`` (the dataset's own notebook parses them with
``format="mixed"``). Both parse here (ISO 8601, naive times as UTC). So does
inference-perf's trace replay (``AzurePublicDatasetReader`` in
``inference_perf/utils/trace_reader.py``): columns by position, the header
optional, ``T`` and ``Z`` accepted. The 2024 files hold 17-27 million rows:
``max_conversations`` reads only that many rows (0: all).

The trace has no text, so each request gets token ids generated from its row
number alone: every request has its own block hash chain (no prefix sharing, as
nothing in the trace says what is shared).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from workload.config import Filters
from workload.hashing import block_hash_chain, keyed_stream
from workload.pool import PoolBuilder, RequestPool

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
PACKAGED_FILE = "azure_llm_inference_conv_2023.csv.gz"
TOKEN_SPACE = 100_000  # synthetic token ids are drawn from [0, TOKEN_SPACE)
_TOKEN_SALT = 0xA2E


def packaged_trace_path() -> Path:
    return Path(str(resources.files("workload").joinpath("data", PACKAGED_FILE)))


def azure_path(path: str) -> Path:
    p = Path(path).expanduser() if path else packaged_trace_path()
    if not p.is_file():
        raise FileNotFoundError(f"[workload].path: Azure trace CSV {str(p)!r} does not exist")
    return p


def synthetic_token_ids(row: int, length: int) -> np.ndarray:
    """Deterministic token ids for trace row ``row`` (a pure function of row and position)."""
    return (keyed_stream(row, length, _TOKEN_SALT) % np.uint64(TOKEN_SPACE)).astype(np.int64)


def _has_header(path: Path) -> bool:
    """Whether the first line names columns (its first field is not a time)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        first = fh.readline().split(",")[0].strip().strip('"')
    return not (first[:4].isdigit() and "-" in first)


def read_trace(path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    import pandas as pd

    if _has_header(path):
        df = pd.read_csv(path, nrows=limit)
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; an Azure LLM inference trace has "
                f"{', '.join(COLUMNS)} (found {', '.join(map(str, df.columns))})"
            )
    else:  # inference-perf's variant: time, input and output tokens by position
        df = pd.read_csv(path, header=None, nrows=limit)
        if df.shape[1] < 3:
            raise ValueError(f"{path}: a headerless Azure trace needs 3 columns (time, context "
                             f"tokens, generated tokens); found {df.shape[1]}")
        df = df.iloc[:, :3].set_axis(list(COLUMNS), axis=1)
    try:  # ISO 8601 with or without fraction and offset (2023 and 2024); naive times are UTC
        stamps = pd.to_datetime(df["TIMESTAMP"].astype(str).str.strip().str.strip('"'),
                                utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column TIMESTAMP is not a date-time column ({exc})") from exc
    epoch = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return {
        "timestamp_s": epoch.to_numpy(dtype=np.float64),
        "input_len": df["ContextTokens"].to_numpy(dtype=np.int64),
        "output_len": df["GeneratedTokens"].to_numpy(dtype=np.int64),
    }


def azure_pool(
    path: Path, block_size: int, filters: Filters, meta: dict[str, Any], progress: bool = False,
    limit: int | None = None,
) -> RequestPool:
    cols = read_trace(path, limit)
    builder = PoolBuilder(block_size)
    dropped = 0
    rows = zip(cols["input_len"], cols["output_len"], cols["timestamp_s"])
    total = len(cols["input_len"])
    for row, (inp, out, ts) in enumerate(
        tqdm(rows, total=total, desc="hashing azure", unit="req", disable=not progress)
    ):
        if not filters.keep_lengths(int(inp), int(out)):
            dropped += 1
            continue
        chain = block_hash_chain(synthetic_token_ids(row, int(inp)), block_size)
        builder.add_conversation(f"azure-{row}", [(0, int(inp), int(out), float(ts))], chain)
    return builder.build({**meta, "rows": len(cols["input_len"]), "rows_filtered_length": dropped})
