"""The emulator's answers to input it cannot serve, and to its own bugs."""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest
from live_helpers import arun, tiny_emulator

from live.emulator.server import EmulatorServer

pytestmark = pytest.mark.timeout(60)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("token", [2**63, 2**64 + 5, 10**30])
def test_a_token_id_too_large_is_a_clear_400(token):
    async def main():
        async with tiny_emulator() as emu:
            import asyncio

            loop = asyncio.get_running_loop()
            body = json.dumps({"prompt": [1, 2, token], "max_tokens": 2}).encode()
            bad = await loop.run_in_executor(None, _post, emu.url, body)
            ok = await loop.run_in_executor(None, _post, emu.url,
                                            json.dumps({"prompt": [1, 2, 2**63 - 1],
                                                        "max_tokens": 2}).encode())
            return bad, ok

    (status, doc), (ok_status, _) = arun(main())
    assert status == 400
    msg = doc["error"]["message"]
    assert "is out of range" in msg and "2^63" in msg
    if token < 2**64:
        assert f"token id {token} is out of range" in msg
    assert doc["error"]["param"] == "prompt"
    assert ok_status == 200  # the largest id that fits is served


def test_an_unexpected_handler_error_is_logged_with_its_traceback_and_answered_500(
        monkeypatch, caplog):
    def broken(self, doc, chat):
        raise ZeroDivisionError("a bug in the handler")

    monkeypatch.setattr(EmulatorServer, "_parse_params", broken)
    caplog.set_level(logging.ERROR, logger="live.emulator")

    async def main():
        async with tiny_emulator() as emu:
            import asyncio

            loop = asyncio.get_running_loop()
            body = json.dumps({"prompt": [1, 2], "max_tokens": 2}).encode()
            first = await loop.run_in_executor(None, _post, emu.url, body)
            # the server keeps serving
            health = await loop.run_in_executor(
                None, lambda: urllib.request.urlopen(emu.url + "/health", timeout=5).status)
            return first, health

    (status, doc), health = arun(main())
    assert status == 500 and "internal error" in doc["error"]["message"]
    assert health == 200
    record = next(r for r in caplog.records if "handler_error" in r.getMessage())
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    assert "Traceback" in caplog.text and "a bug in the handler" in caplog.text
