"""What a live unit sets up before its first request: the simulator's router, cold caches.

Routers index prompts as the simulator's router does (same block size, same index
capacity), and every backend's prefix cache is reset, or the run says it was not.
The simulator sizes its router's approximate index of each backend's cache to that
engine's KV blocks; a live run of the same scenario must build the same router, or a
sim-vs-live validation compares two different policies (``prefix_affinity`` with a
31,250-block index live against 8,192 blocks simulated).
"""
from __future__ import annotations

import asyncio

import pytest

import routing
import live.run as live_run
from live.gateway import Gateway, GatewayConfig
from live.gateway.cli import build_parser, config_from_args
from live.router import LiveRouter
from routing.router import DEFAULT_INDEX_BLOCKS
from scenarios.grid import expand_grid
from scenarios.loader import parse_scenario

SCENARIO = """\
name = "sizes"
num_requests = 10
[workload]
source = "synthetic"
block_size = 32
[workload.synthetic]
input = {dist = "fixed", value = 64}
output = {dist = "fixed", value = 4}
num_requests = 10
[arrivals]
pattern = "poisson"
rate = 1.0
[[cluster.groups]]
name = "tiny"
count = 2
profile = "cpu-tiny"
block_size = 32
[[cluster.groups]]
name = "pinned"
count = 1
profile = "cpu-tiny"
block_size = 32
num_kv_blocks = 500
[router]
strategies = ["prefix_affinity"]
"""


def capacities(fleet: LiveRouter) -> list[int]:
    return [index.capacity for index in fleet.router._prefix]


def test_a_scenarios_backends_get_the_simulators_kv_blocks():
    point, = expand_grid(parse_scenario(SCENARIO))
    # cpu-tiny: 8,192 blocks of 32 tokens; the scenario pins the third backend at 500.
    assert live_run.backend_kv_blocks(point) == [8192, 8192, 500]
    halved = SCENARIO.replace("block_size = 32", "block_size = 16")
    point16, = expand_grid(parse_scenario(halved))
    # The same capacity in tokens, in 16-token blocks.
    assert live_run.backend_kv_blocks(point16) == [16384, 16384, 500]


def test_live_router_takes_one_size_or_one_per_backend():
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    strategy = routing.build("prefix_affinity")
    assert capacities(LiveRouter(urls, strategy)) == [DEFAULT_INDEX_BLOCKS] * 2
    assert capacities(LiveRouter(urls, strategy, prefix_index_blocks=77)) == [77, 77]
    assert capacities(LiveRouter(urls, strategy, prefix_index_blocks=[10, 20])) == [10, 20]
    with pytest.raises(ValueError, match="3 sizes for 2 backends"):
        LiveRouter(urls, strategy, prefix_index_blocks=[1, 2, 3])


def test_gateway_flags_set_block_size_and_index_sizes():
    args = build_parser().parse_args(["--backends", "http://127.0.0.1:1,http://127.0.0.1:2",
                                      "--strategy", "prefix_affinity", "--block-size", "32",
                                      "--prefix-index-blocks", "100,200"])
    gw = Gateway(config_from_args(args))
    assert gw.fleet.block_size == 32 and capacities(gw.fleet) == [100, 200]
    one = Gateway(GatewayConfig(backends=["http://127.0.0.1:1", "http://127.0.0.1:2"],
                                strategy="prefix_affinity", prefix_index_blocks=[64]))
    assert capacities(one.fleet) == [64, 64]
    with pytest.raises(ValueError, match="--prefix-index-blocks: 3 sizes for 2 backends"):
        GatewayConfig(backends=["http://127.0.0.1:1", "http://127.0.0.1:2"],
                      prefix_index_blocks=[1, 2, 3]).validate()
    for bad in ("0", "a,b"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--backends", "http://127.0.0.1:1", "--prefix-index-blocks", bad])


def test_a_gateway_unit_starts_its_gateway_with_the_scenarios_sizes(monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_start_gateway(urls, strategy, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(live_run, "start_gateway", fake_start_gateway)
    with pytest.raises(Stop):
        asyncio.run(live_run.run_unit(
            None, ["http://127.0.0.1:1", "http://127.0.0.1:2"], ["a", "b"], ["g", "g"],
            "prefix_affinity", {}, 0, labels=None, scrape_interval_s=0.5, block_size=32,
            gateway=True, load=None, index_blocks=[8192, 500]))
    extra = seen["extra"]
    assert extra[extra.index("--block-size") + 1] == "32"
    assert extra[extra.index("--prefix-index-blocks") + 1] == "8192,500"


# --- cold caches before every unit ------------------------------------------------------------
class _ResetServer:
    """A loopback stand-in for vLLM's dev endpoint: answers POST /reset_prefix_cache from a script."""

    def __init__(self, answers):
        import http.server
        import threading

        self.answers = list(answers)
        self.calls = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                owner.calls += 1
                status, body = owner.answers[min(owner.calls, len(owner.answers)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_a_refused_reset_is_retried_until_vllm_frees_its_blocks():
    busy, done = (200, b'{"success": false}'), (200, b'{"success": true}')
    with _ResetServer([busy, busy, done]) as srv:
        assert live_run.reset_backends([srv.url], emulated=False, timeout_s=10.0) == []
        assert srv.calls == 3


def test_a_reset_that_never_happens_is_reported_not_ignored():
    with _ResetServer([(200, b'{"success": false}')]) as srv:
        problems = live_run.reset_backends([srv.url], emulated=False, timeout_s=0.5)
        assert len(problems) == 1 and "not reset" in problems[0] and srv.url in problems[0]
    with _ResetServer([(404, b"")]) as srv:
        problems = live_run.reset_backends([srv.url], emulated=False)
        assert len(problems) == 1 and "VLLM_SERVER_DEV_MODE=1" in problems[0]
    # Nothing listening: reported as well.
    with _ResetServer([(200, b"")]) as srv:
        url = srv.url
    assert "warm cache" in live_run.reset_backends([url], emulated=False)[0]


def test_warm_units_are_noted_in_the_run_manifest(tmp_path, capsys):
    from results.rundir import RunDir, Unit

    run = RunDir.create(tmp_path / "run", {"experiment_id": "x"})
    unit = Unit("p", "round_robin", 0)
    live_run.note_warm_caches(run, unit, ["http://127.0.0.1:1: not reset"])
    assert run.manifest["warm_caches"] == {"p/round_robin/0": ["http://127.0.0.1:1: not reset"]}
    assert "p/round_robin/0" in capsys.readouterr().err
