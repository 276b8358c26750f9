"""Open a report in headless Chromium and collect console errors and chart renders.

A test helper (``tests/results/test_report_browser.py``, and
``benchmarks/report_in_browser.py``), not part of the shipped ``results`` package.

The report must open offline without a console error and every chart must
render; this module checks that the way a person would, in a real browser.
It starts Chromium (Debian's ``chromium`` package, or any binary given) with a
fresh profile, no network (every host name resolves to nothing, so a report
that fetched anything would log an error), and the DevTools protocol on a
loopback port; then it drives one page over a small standard-library
WebSocket client. Everything is bounded by a deadline and the browser is
always stopped.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    "--remote-allow-origins=*", "--host-resolver-rules=MAP * ~NOTFOUND",
]


class BrowserError(RuntimeError):
    """Chromium could not be started or driven."""


def find_chromium() -> str | None:
    """The first Chromium-like binary on PATH (or in $CHROMIUM), else None."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass(slots=True)
class PageCheck:
    """What the browser saw while loading the report."""

    console_errors: list[str] = field(default_factory=list)
    charts_total: int = 0
    charts_rendered: int = 0
    chart_errors: list[str] = field(default_factory=list)
    empty_charts: list[str] = field(default_factory=list)  # chart divs without a drawn SVG
    load_s: float = 0.0
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return (not self.console_errors and not self.chart_errors and not self.empty_charts
                and self.charts_rendered == self.charts_total)


def check_page(
    html_path: str | Path,
    *,
    chromium: str | None = None,
    timeout_s: float = 60.0,
    screenshot: str | Path | None = None,
    width: int = 1280,
) -> PageCheck:
    """Load ``html_path`` and wait until every chart has rendered or failed."""
    binary = chromium or find_chromium()
    if binary is None:
        raise BrowserError(f"no Chromium binary found (tried {', '.join(CHROMIUM_NAMES)}; "
                           "install Debian's `chromium` or set $CHROMIUM)")
    url = Path(html_path).resolve().as_uri()
    deadline = time.monotonic() + timeout_s
    profile = tempfile.mkdtemp(prefix="report-chromium-")
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(Path(profile), proc, deadline)
        ws_url = _page_target(port, deadline)
        with _Cdp(ws_url, deadline) as cdp:
            return _load(cdp, url, deadline, screenshot, width)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def _load(cdp: _Cdp, url: str, deadline: float, screenshot, width: int) -> PageCheck:
    check = PageCheck()
    for method in ("Runtime.enable", "Log.enable", "Page.enable"):
        cdp.call(method)
    cdp.call("Emulation.setDeviceMetricsOverride",
             {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    start = time.monotonic()
    cdp.call("Page.navigate", {"url": url})
    cdp.wait_event("Page.loadEventFired")
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = cdp.evaluate("window.__report || null") or {}
        if state and state.get("rendered", 0) + len(state.get("errors", [])) >= state.get("total", 0):
            break
        cdp.pump(0.2)
    else:
        check.chart_errors.append(f"charts did not finish rendering before the deadline: {state}")
    check.load_s = time.monotonic() - start
    if not state:
        check.chart_errors.append("the page has no window.__report (not a results report?)")
    check.charts_total = int(state.get("total", 0))
    check.charts_rendered = int(state.get("rendered", 0))
    check.chart_errors += list(state.get("errors", []))
    sizes = cdp.evaluate(
        "Array.from(document.querySelectorAll('.chart')).map(d => {"
        " const s = d.querySelector('svg'); const r = s ? s.getBoundingClientRect() : null;"
        " return [d.dataset.chart, r ? r.width * r.height : 0,"
        " s ? s.querySelectorAll('path,rect,line,text').length : 0]; })") or []
    check.empty_charts = [name for name, area, marks in sizes if area <= 0 or marks == 0]
    cdp.pump(0.3)  # late console messages
    check.console_errors = list(cdp.errors)
    if screenshot is not None:
        height = int(cdp.evaluate("document.documentElement.scrollHeight") or 900)
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": min(height, 16000), "deviceScaleFactor": 1, "mobile": False})
        shot = cdp.call("Page.captureScreenshot", {"format": "png"})
        path = Path(screenshot)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        check.screenshot = path
    return check


def _devtools_port(profile: Path, proc: subprocess.Popen, deadline: float) -> int:
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrowserError(f"Chromium exited with status {proc.returncode} before it was ready")
        if marker.exists():
            lines = marker.read_text().split()
            if lines:
                return int(lines[0])
        time.sleep(0.05)
    raise BrowserError("Chromium did not open its DevTools port in time")


def _page_target(port: int, deadline: float) -> str:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.loads(r.read())
        except OSError:
            time.sleep(0.1)
            continue
        pages = [t for t in targets if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise BrowserError("Chromium opened no page target in time")


class _Cdp:
    """A minimal DevTools-protocol client over a standard-library WebSocket."""

    def __init__(self, ws_url: str, deadline: float) -> None:
        self.deadline = deadline
        self.ws = _WebSocket(ws_url)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def __enter__(self) -> _Cdp:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ws.close()

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        while True:
            msg = self._recv(self._left())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise BrowserError(f"{method} failed: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return res.get("result", {}).get("value")

    def wait_event(self, method: str) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            msg = self._recv(self._left())
            if msg.get("method") == method:
                return msg

    def pump(self, seconds: float) -> None:
        """Read events for ``seconds`` (or until the deadline)."""
        end = min(time.monotonic() + seconds, self.deadline)
        while (left := end - time.monotonic()) > 0:
            try:
                self._recv(left)
            except TimeoutError:
                return

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the browser check ran past its deadline")
        return left

    def _recv(self, timeout: float) -> dict[str, Any]:
        msg = json.loads(self.ws.recv(timeout))
        method = msg.get("method")
        params = msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.errors.append(f"log: {e.get('text')} {e.get('url', '')}".strip())
        elif method:
            self.events.append(msg)
        return msg


class _WebSocket:
    """Client side of RFC 6455, just enough for the DevTools protocol (text frames)."""

    def __init__(self, url: str) -> None:
        if not url.startswith("ws://"):
            raise BrowserError(f"unexpected DevTools URL {url!r}")
        hostport, _, path = url[len("ws://"):].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port or 80)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BrowserError("DevTools closed the connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise BrowserError(f"DevTools refused the WebSocket: {status.decode(errors='replace')}")
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str, opcode: int = 0x1) -> None:
        payload = text.encode() if isinstance(text, str) else text
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def recv(self, timeout: float) -> str:
        """The next complete text message (pings answered, fragments joined)."""
        self.sock.settimeout(max(timeout, 0.01))
        parts: list[bytes] = []
        while True:
            try:
                fin, opcode, payload = self._frame()
            except socket.timeout as exc:
                raise TimeoutError("no DevTools message in time") from exc
            if opcode == 0x9:
                self.send(payload, opcode=0xA)  # type: ignore[arg-type]
                continue
            if opcode == 0x8:
                raise BrowserError("DevTools closed the WebSocket")
            if opcode in (0x1, 0x2, 0x0):
                parts.append(payload)
                if fin:
                    return b"".join(parts).decode()

    def _frame(self) -> tuple[bool, int, bytes]:
        """Parse one frame from the buffer, reading more as needed.

        Nothing is consumed until the whole frame is there, so a timeout in
        the middle of a frame leaves the stream intact for the next call.
        """
        while True:
            frame = self._parse(self.buf)
            if frame is not None:
                fin, opcode, data, used = frame
                self.buf = self.buf[used:]
                return fin, opcode, data
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BrowserError("DevTools closed the connection")
            self.buf += chunk

    @staticmethod
    def _parse(buf: bytes) -> tuple[bool, int, bytes, int] | None:
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        n, pos = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,), pos = struct.unpack(">H", buf[2:4]), 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,), pos = struct.unpack(">Q", buf[2:10]), 10
        mask = b""
        if b1 & 0x80:
            mask, pos = buf[pos:pos + 4], pos + 4
        if len(buf) < pos + n:
            return None
        data = buf[pos:pos + n]
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return bool(b0 & 0x80), b0 & 0x0F, data, pos + n

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
