"""Launching vLLM: the command, and stopping without orphans (with a fake server)."""
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from calibrate.process import ManagedProcess, group_alive
from calibrate.serve import ServeError, ServeSpec, VllmFleet, VllmServer, build_command, free_port, parse_cores
from process_helpers import pid_alive

#: Serves /health on ``port`` until killed: the end of both fake servers below.
HEALTH_SERVER = textwrap.dedent("""
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")

FAKE_SERVER = textwrap.dedent("""
    import http.server, os, signal, subprocess, sys, time
    port, pidfile, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "crash":
        print("fake vllm: cannot load model", flush=True)
        sys.exit(3)
""") + HEALTH_SERVER


def _fake(tmp_path, mode="serve"):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    port = free_port()
    spec = ServeSpec(shape="tiny", port=port, model_root=tmp_path / "models", log_path=tmp_path / "fake.log")
    pidfile = tmp_path / "pids"
    server = VllmServer(spec, argv=[sys.executable, str(script), str(port), str(pidfile), mode], env=dict(os.environ))
    return server, pidfile


def _pids(pidfile):
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "fake server never wrote its pids"
        time.sleep(0.05)
    return [int(x) for x in pidfile.read_text().split()]


def test_cpu_command_has_the_vllm_cpu_settings(tmp_path):
    spec = ServeSpec(shape="small", cores="1", kv_cache_gib=2, device="cpu", vllm_python="/x/python",
                     max_num_seqs=64, model_root=tmp_path)
    argv, env = build_command(spec, "/m/llama-small", 8123)
    assert argv[:3] == ["/x/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    assert "--load-format dummy" in joined and "--host 127.0.0.1" in joined and "--port 8123" in joined
    assert "--block-size 32" in joined  # vLLM-CPU's attention needs a multiple of 32
    assert "--max-num-seqs 64" in joined and "--served-model-name llama-small" in joined
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1" and env["OMP_NUM_THREADS"] == "1"


def test_gpu_command_serves_the_named_model_without_cpu_settings(tmp_path):
    spec = ServeSpec(model="meta-llama/Llama-3.1-8B", device="gpu", vllm_python="python", model_root=tmp_path)
    argv, env = build_command(spec, spec.model, 8000)
    joined = " ".join(argv)
    assert "--model meta-llama/Llama-3.1-8B" in joined and "--block-size 16" in joined
    assert "dummy" not in joined and "VLLM_CPU_KVCACHE_SPACE" not in {k for k in env if k not in os.environ}


@pytest.mark.parametrize("bad,match", [("0-", "bad core list"), ("a", "bad core list"), ("3-1", "bad core list")])
def test_bad_core_lists_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_cores(bad)


def test_core_lists_parse():
    assert parse_cores("0") == [0] and parse_cores("0-2,5") == [0, 1, 2, 5]


def test_bad_spec_values_are_named():
    with pytest.raises(ValueError, match="unknown model shape 'big'"):
        ServeSpec(shape="big")
    with pytest.raises(ValueError, match="device must be one of auto, cpu, gpu"):
        ServeSpec(device="tpu")
    with pytest.raises(ValueError, match="max_num_seqs must be >= 1"):
        ServeSpec(max_num_seqs=0)
    with pytest.raises(ValueError, match="kv_cache_gib must be a whole number of GiB"):
        ServeSpec(kv_cache_gib=0.5)
    with pytest.raises(ValueError, match="nice must be in -20..19"):
        ServeSpec(nice=40)


def test_affinity_and_priority_reach_every_process_of_the_group(tmp_path):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    proc = ManagedProcess([sys.executable, str(script), "0", str(tmp_path / "pids"), "serve"],
                          cpu_affinity=[0], nice=5)
    with proc:
        for pid in _pids(tmp_path / "pids"):
            assert os.sched_getaffinity(pid) == {0}
            assert os.getpriority(os.PRIO_PROCESS, pid) == 5


def test_missing_vllm_python_says_how_to_install(tmp_path):
    spec = ServeSpec(vllm_python=str(tmp_path / "nope" / "python"), model_root=tmp_path)
    with pytest.raises(ServeError, match="install-vllm-cpu.sh"):
        VllmServer(spec).start(timeout_s=5)


def test_stop_leaves_no_process_of_the_group(tmp_path):
    server, pidfile = _fake(tmp_path)
    with server:
        leader, child = _pids(pidfile)
        assert pid_alive(leader) and pid_alive(child)
        assert (tmp_path / "models" / "llama-tiny" / "config.json").exists()
    assert not pid_alive(leader) and not pid_alive(child)
    assert not group_alive(leader)


def test_a_server_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    proc = ManagedProcess([sys.executable, str(script), "0", str(tmp_path / "pids"), "ignore-term"])
    proc.start()
    leader, child = _pids(tmp_path / "pids")
    time.sleep(0.3)  # let it install the SIGTERM handler
    t0 = time.monotonic()
    proc.stop(grace_s=0.5)
    assert time.monotonic() - t0 < 5
    assert not pid_alive(leader) and not pid_alive(child)


def test_a_server_that_exits_early_fails_with_its_log(tmp_path):
    server, pidfile = _fake(tmp_path, mode="crash")
    with pytest.raises(ServeError, match="exited with code 3(.|\n)*cannot load model"):
        server.start(timeout_s=30)
    leader, child = _pids(pidfile)
    assert not pid_alive(child)  # the orphaned grandchild was cleaned up too


def test_the_server_stops_when_its_parent_is_killed(tmp_path):
    """PR_SET_PDEATHSIG: a parent killed with SIGKILL cannot clean up, the leader still goes."""
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from calibrate.process import ManagedProcess
        ManagedProcess([sys.executable, {str(script)!r}, "0", {str(tmp_path / 'pids')!r}, "serve"]).start()
        time.sleep(600)
    """)])
    try:
        leader, _ = _pids(tmp_path / "pids")
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while pid_alive(leader) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(leader)
    finally:
        parent.kill()
        pids = (tmp_path / "pids").read_text().split() if (tmp_path / "pids").exists() else []
        for pid in pids:  # the grandchild of this test's own fake server
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_fleet_pins_one_core_per_instance(tmp_path):
    fleet = VllmFleet(3, ServeSpec(shape="tiny", model_root=tmp_path), cores=["0", "1", "0"])
    assert [s.spec.cores for s in fleet.servers] == ["0", "1", "0"]
    assert len(set(s.port for s in fleet.servers)) == 3
    with pytest.raises(ValueError, match="n >= 1"):
        VllmFleet(0, ServeSpec())


FAKE_API_SERVER = textwrap.dedent("""
    import http.server, os, signal, sys, time
    port = int(sys.argv[sys.argv.index("--port") + 1])
    def slow_exit(signum, frame):  # vLLM takes a while to shut down
        time.sleep(1.0)
        os._exit(0)
    signal.signal(signal.SIGTERM, slow_exit)
    with open(os.environ["FAKE_VLLM_PIDFILE"], "w") as f:
        f.write(str(os.getpid()))
""") + HEALTH_SERVER


@pytest.mark.slow
def test_serve_command_finishes_its_stop_when_signalled_twice(tmp_path):
    """A parent that repeats SIGTERM while waiting must not cut ``calibrate serve``'s stop short."""
    fake = tmp_path / "fakepkg" / "vllm" / "entrypoints" / "openai"
    fake.mkdir(parents=True)
    for d in (fake, fake.parent, fake.parent.parent):
        (d / "__init__.py").write_text("")
    (fake / "api_server.py").write_text(FAKE_API_SERVER)
    pidfile = tmp_path / "pid"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'fakepkg'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FAKE_VLLM_PIDFILE": str(pidfile), "LD_PRELOAD": ""}
    proc = subprocess.Popen([sys.executable, "-m", "calibrate", "serve", "--shape", "tiny", "--port", "0",
                             "--vllm-python", sys.executable, "--model-root", str(tmp_path / "models"),
                             "--startup-timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().startswith("http://127.0.0.1:")
        server_pid = int(pidfile.read_text())
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # inside the stop, waiting for the slow server
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopping vLLM" in err and "interrupted" not in err
    assert not pid_alive(server_pid)


# --- KV-event endpoints: loopback detection and a private IPC directory -------------------

@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("fe80::1", False),
    ("example.org", False),
])
def test_loopback_hosts_are_recognised(host, loopback):
    from calibrate.serve import is_loopback

    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_a_loopback_server_publishes_kv_events_on_loopback_only(tmp_path, host):
    spec = ServeSpec(shape="small", cores="1", device="cpu", vllm_python="/x/python",
                     model_root=tmp_path, host=host, kv_events=True)
    argv, env = build_command(spec, "/m/llama-small", 8123, ipc_dir=str(tmp_path))
    config = json.loads(argv[argv.index("--kv-events-config") + 1])
    assert config["endpoint"] == f"ipc://{tmp_path}/kv-events.ipc"
    assert config["replay_endpoint"].startswith("tcp://127.0.0.1:")
    assert "*" not in argv[argv.index("--kv-events-config") + 1]
    assert env["VLLM_HOST_IP"] == "127.0.0.1"


def test_a_server_on_every_interface_publishes_on_wildcard_ports(tmp_path):
    spec = ServeSpec(shape="small", cores="1", device="cpu", vllm_python="/x/python",
                     model_root=tmp_path, host="0.0.0.0", kv_events=True)
    argv, _ = build_command(spec, "/m/llama-small", 8123)
    config = json.loads(argv[argv.index("--kv-events-config") + 1])
    assert config["endpoint"].startswith("tcp://*:") and config["replay_endpoint"].startswith("tcp://*:")


def test_the_kv_event_socket_lives_in_a_private_directory_removed_on_stop(tmp_path):
    spec = ServeSpec(shape="small", cores="1", device="cpu", vllm_python="/x/python",
                     model_root=tmp_path, host="127.0.0.1", port=8123, kv_events=True)
    servers = [VllmServer(spec), VllmServer(spec)]
    paths = []
    for server in servers:
        argv, _, _ = server.command()
        endpoint = json.loads(argv[argv.index("--kv-events-config") + 1])["endpoint"]
        path = Path(endpoint.removeprefix("ipc://"))
        paths.append(path)
        st = path.parent.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    # Not the old predictable name, and not shared between servers on the same port.
    assert all(p != Path(tempfile.gettempdir()) / "vllm-kv-events-8123.ipc" for p in paths)
    assert paths[0].parent != paths[1].parent
    for server, path in zip(servers, paths):
        server.stop()
        assert not path.parent.exists()


def test_a_server_url_on_ipv6_loopback_is_bracketed(tmp_path):
    spec = ServeSpec(shape="small", device="cpu", model_root=tmp_path, host="::1")
    server = VllmServer(spec)
    assert server.url == f"http://[::1]:{server.port}"


# --- --nice that this user may not apply ---------------------------------------------------

def _unprivileged(monkeypatch, rlimit_nice: int = 0) -> None:
    """As a user without CAP_SYS_NICE and with RLIMIT_NICE ``rlimit_nice`` (the tests run
    as root, so the privilege check is what is simulated)."""
    import resource

    import calibrate.process as process

    real = resource.getrlimit
    monkeypatch.setattr(process, "_has_cap_sys_nice", lambda: False)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (rlimit_nice, rlimit_nice)
                        if which == resource.RLIMIT_NICE else real(which))


def test_a_negative_nice_without_privilege_is_refused_before_starting(monkeypatch, tmp_path):
    from calibrate.process import NiceNotPermitted

    _unprivileged(monkeypatch)
    proc = ManagedProcess([sys.executable, "-c", "pass"], nice=-10, log_path=tmp_path / "log")
    with pytest.raises(NiceNotPermitted, match=r"--nice -10: .*root or CAP_SYS_NICE.*Drop --nice"):
        proc.start()
    assert proc.proc is None and not (tmp_path / "log").exists()


def test_vllm_server_refuses_the_nice_before_any_work(monkeypatch, tmp_path):
    from calibrate.process import NiceNotPermitted

    _unprivileged(monkeypatch)
    spec = ServeSpec(shape="small", device="cpu", model_root=tmp_path / "models", nice=-5)
    with pytest.raises(NiceNotPermitted, match="--nice -5"):
        VllmServer(spec, argv=[sys.executable, "-c", "pass"]).launch()
    assert not (tmp_path / "models").exists()


def test_which_nice_values_an_unprivileged_user_may_set(monkeypatch):
    from calibrate.process import nice_permitted

    own = os.getpriority(os.PRIO_PROCESS, 0)
    _unprivileged(monkeypatch, rlimit_nice=0)
    assert nice_permitted(own) and nice_permitted(min(own + 5, 19))
    assert not nice_permitted(own - 1)
    _unprivileged(monkeypatch, rlimit_nice=30)  # RLIMIT_NICE 30: down to 20 - 30 = -10
    assert nice_permitted(-10) and not nice_permitted(-11)


def test_a_child_setup_failure_is_explained(monkeypatch, tmp_path):
    """If setpriority fails in the child anyway, the error says what the child was set up with."""
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)  # inherited by the forked child
    proc = ManagedProcess([sys.executable, "-c", "pass"], nice=-3, log_path=tmp_path / "log")
    with pytest.raises(RuntimeError, match=r"nice -3 \(--nice; negative needs root"):
        proc.start()
