"""Launch a local real vLLM (CPU: random-weight Llama of a chosen shape; GPU: a model).

``VllmServer`` is a context manager: it writes the model directory (CPU), starts
``python -m vllm.entrypoints.openai.api_server`` in its own process group with
the environment vLLM-CPU needs, waits for ``GET /health``, and on exit stops the
whole group (see ``calibrate.process``). ``VllmFleet`` starts several, one core
each::

    with VllmServer(ServeSpec(shape="tiny", cores="0")) as server:
        print(server.url)          # http://127.0.0.1:<port>

vLLM-CPU quirks handled here: the ``vllm serve`` console script fails on package
metadata (so the module is run directly); ``VLLM_HOST_IP=127.0.0.1`` keeps its
internal sockets on loopback; ``VLLM_CPU_KVCACHE_SPACE`` is in GiB;
``VLLM_CPU_OMP_THREADS_BIND`` pins its compute threads; and it must not start
in a directory holding a ``profile.py`` (it would shadow the standard library),
so it runs in the model directory.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from calibrate.modeldir import SHAPES, get_shape, write_model_dir
from calibrate.process import ManagedProcess, check_nice

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where ``scripts/install-vllm-cpu.sh`` puts the vLLM-CPU virtual environment.
DEFAULT_VLLM_VENV = REPO_ROOT / ".vllm" / "venv"
DEFAULT_MODEL_ROOT = REPO_ROOT / ".vllm" / "models"
DEFAULT_LOG_DIR = REPO_ROOT / ".vllm" / "logs"
DEVICES = ("auto", "cpu", "gpu")
#: vLLM-CPU's attention kernel accepts only block sizes that are multiples of 32.
CPU_BLOCK_SIZE = 32
GPU_BLOCK_SIZE = 16


class ServeError(RuntimeError):
    """vLLM could not be started, or did not become healthy."""


def default_vllm_python() -> str:
    """``$VLLM_PYTHON``, else ``.vllm/venv/bin/python`` if installed, else this interpreter."""
    env = os.environ.get("VLLM_PYTHON")
    if env:
        return env
    candidate = DEFAULT_VLLM_VENV / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    return sys.executable


#: Where Debian's libtcmalloc-minimal4 puts the allocator vLLM-CPU's docs recommend preloading.
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")


def cpu_preloads(vllm_python: str) -> list[str]:
    """tcmalloc and Intel OpenMP (shipped in vllm-cpu's venv), where present.

    vLLM-CPU warns without them: glibc's allocator fragments over a long run and
    the server slows down as it ages, which would make a profile drift.
    """
    found = [p for p in TCMALLOC_PATHS if os.path.isfile(p)][:1]
    venv_lib = Path(os.path.abspath(vllm_python)).parent.parent / "lib" / "libiomp5.so"
    if venv_lib.is_file():
        found.append(str(venv_lib))
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return s.getsockname()[1]


def detect_device() -> str:
    """``gpu`` where ``nvidia-smi`` is on PATH, else ``cpu``."""
    return "gpu" if shutil.which("nvidia-smi") else "cpu"


@dataclass
class ServeSpec:
    """Everything that decides how one vLLM instance is started."""

    shape: str = "tiny"
    model: str | None = None  # a model name or path: the regular (GPU) vLLM path
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    cores: str | None = None  # CPU: cores to pin to, e.g. "0" or "0-1"; None: no pinning
    #: CPU: confine every vLLM process (API server, engine core, worker) to ``cores``,
    #: not only the model's compute threads, so one instance is fully contained on them.
    pin_all: bool = False
    #: Scheduling priority of every vLLM process (negative: ahead of other work; needs root).
    nice: int = 0
    kv_cache_gib: int = 1  # whole GiB: vLLM-CPU parses VLLM_CPU_KVCACHE_SPACE as an integer
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    block_size: int | None = None  # None: 32 on CPU (its attention kernel needs a multiple of 32), 16 on GPU
    dtype: str = "float32"
    device: str = "auto"
    vllm_python: str | None = None
    model_root: Path = DEFAULT_MODEL_ROOT
    log_path: Path | None = None
    seed: int = 0
    extra_args: list[str] = field(default_factory=list)
    #: Extra environment variables for vLLM, e.g. ``VLLM_SERVER_DEV_MODE=1`` (serves
    #: ``POST /reset_prefix_cache``, which validation uses between units).
    environment: dict[str, str] = field(default_factory=dict)
    #: Publish KV-cache events (vLLM's ``--kv-events-config``; see ``kv_events_config``).
    kv_events: bool = False

    def __post_init__(self) -> None:
        if self.model is None:
            get_shape(self.shape)  # fails naming the known shapes
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.kv_cache_gib, bool) or not isinstance(self.kv_cache_gib, int) or self.kv_cache_gib < 1:
            raise ValueError(f"kv_cache_gib must be a whole number of GiB >= 1 (vLLM-CPU reads "
                             f"VLLM_CPU_KVCACHE_SPACE as an integer), got {self.kv_cache_gib!r}")
        if not -20 <= int(self.nice) <= 19:
            raise ValueError(f"nice must be in -20..19, got {self.nice}")
        if not 0 <= int(self.port) < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.cores is not None:
            parse_cores(self.cores)

    @property
    def served_name(self) -> str:
        return self.model if self.model is not None else get_shape(self.shape).served_name

    def resolved_device(self) -> str:
        return detect_device() if self.device == "auto" else self.device

    def resolved_block_size(self) -> int:
        if self.block_size is not None:
            return int(self.block_size)
        return CPU_BLOCK_SIZE if self.resolved_device() == "cpu" else GPU_BLOCK_SIZE


def parse_cores(text: str) -> list[int]:
    """``"0"``, ``"0-3"`` or ``"0,2"`` -> core ids; fails naming the bad part."""
    cores: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                cores.extend(range(lo, hi + 1))
            else:
                cores.append(int(part))
        except ValueError:
            raise ValueError(f"bad core list {text!r} (part {part!r}); use e.g. 0, 0-3 or 0,2") from None
    if any(c < 0 for c in cores):
        raise ValueError(f"bad core list {text!r}: core ids are >= 0")
    return cores


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost`` or any loopback address
    (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def kv_events_config(spec: ServeSpec, port: int, ipc_dir: str | None = None) -> dict:
    """vLLM's ``--kv-events-config`` for a server on ``port``: a ZMQ publisher with a replay
    socket, reachable from this machine only when the server binds loopback.

    vLLM binds a publisher endpoint only when it is a wildcard (``tcp://*:P``, every
    interface) or a local socket (``ipc://``); ``tcp://127.0.0.1:P`` would make it
    *connect*. So a loopback server publishes on ``ipc://<ipc_dir>/kv-events.ipc`` and
    replays on ``tcp://127.0.0.1:<free port>``; a server bound elsewhere uses wildcard
    TCP ports. Routers find both on ``GET /kv_event_sources``. ``ipc_dir`` is a private
    directory (mode 0700; a fresh ``tempfile.mkdtemp`` when not given, which the caller
    removes): a predictable name in the shared temporary directory could be taken first
    by another user.
    """
    replay = _free_tcp_port()
    if is_loopback(spec.host):
        if ipc_dir is None:
            ipc_dir = tempfile.mkdtemp(prefix="vllm-kv-events-")
        endpoint = f"ipc://{os.path.join(ipc_dir, 'kv-events.ipc')}"
        replay_endpoint = f"tcp://127.0.0.1:{replay}"
    else:
        endpoint, replay_endpoint = f"tcp://*:{_free_tcp_port()}", f"tcp://*:{replay}"
    return {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint,
            "replay_endpoint": replay_endpoint, "topic": ""}


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_command(spec: ServeSpec, model_path: str, port: int,
                  ipc_dir: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start vLLM's OpenAI API server for ``spec``
    (``ipc_dir``: see ``kv_events_config``)."""
    python = spec.vllm_python or default_vllm_python()
    argv = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path,
        "--served-model-name", spec.served_name,
        "--host", spec.host,
        "--port", str(port),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--max-num-batched-tokens", str(spec.max_num_batched_tokens),
        "--max-model-len", str(spec.max_model_len),
        "--block-size", str(spec.resolved_block_size()),
        "--seed", str(spec.seed),
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",  # usage reports cached_tokens
    ]
    if spec.kv_events:
        argv += ["--kv-events-config", json.dumps(kv_events_config(spec, port, ipc_dir))]
    env = dict(os.environ)
    env["VLLM_HOST_IP"] = "127.0.0.1" if is_loopback(spec.host) else env.get(
        "VLLM_HOST_IP", spec.host)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if spec.resolved_device() == "cpu":
        argv += ["--dtype", spec.dtype, "--enforce-eager"]
        if spec.model is None:
            argv += ["--load-format", "dummy", "--tokenizer", model_path]
        env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.kv_cache_gib)
        if "LD_PRELOAD" not in env:
            preloads = cpu_preloads(python)
            if preloads:
                env["LD_PRELOAD"] = ":".join(preloads)
        if spec.cores is not None:
            cores = parse_cores(spec.cores)
            env["VLLM_CPU_OMP_THREADS_BIND"] = spec.cores
            env["OMP_NUM_THREADS"] = str(len(cores))
    elif spec.model is None:
        argv += ["--load-format", "dummy", "--tokenizer", model_path]
    argv += list(spec.extra_args)
    env.update(spec.environment)
    return argv, env


def _get_status(url: str, timeout_s: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback URL we built
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class VllmServer:
    """One real vLLM, started on ``start()``/``__enter__`` and stopped without orphans."""

    def __init__(self, spec: ServeSpec, *, argv: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        """``argv``/``env`` replace the vLLM command (tests start a fake server this way)."""
        self.spec = spec
        self.port = spec.port or free_port(spec.host)
        self._argv, self._env = argv, env
        self.process: ManagedProcess | None = None
        self.model_path: str | None = None
        self.startup_s = float("nan")
        self._t0 = 0.0
        self._ipc_dir: str | None = None  # private directory of the KV-event socket

    @property
    def url(self) -> str:
        host = self.spec.host if self.spec.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        """(argv, env, working directory) this server will run."""
        spec = self.spec
        if spec.model is None:
            model_dir = write_model_dir(spec.shape, spec.model_root, spec.dtype)
            self.model_path = str(model_dir)
            cwd = model_dir
        else:
            self.model_path = spec.model
            cwd = Path(spec.model_root)
            cwd.mkdir(parents=True, exist_ok=True)
        if spec.kv_events and is_loopback(spec.host) and self._ipc_dir is None:
            self._ipc_dir = tempfile.mkdtemp(prefix="vllm-kv-events-")  # removed by stop()
        argv, env = build_command(spec, self.model_path, self.port, self._ipc_dir)
        if self._argv is not None:
            argv = self._argv
        if self._env is not None:
            env = self._env
        return argv, env, cwd

    def launch(self) -> VllmServer:
        """Start the process without waiting for it (``wait_healthy`` next)."""
        check_nice(self.spec.nice)  # before any work: a clear error naming --nice
        argv, env, cwd = self.command()
        python = argv[0]
        if self._argv is None and not (os.path.isfile(python) or shutil.which(python)):
            raise ServeError(
                f"vLLM's Python {python!r} does not exist; install vLLM-CPU with "
                f"scripts/install-vllm-cpu.sh, or pass --vllm-python / set VLLM_PYTHON"
            )
        name = self.spec.served_name.replace("/", "_")
        log = self.spec.log_path or DEFAULT_LOG_DIR / f"vllm-{name}-{self.port}.log"
        affinity = None
        if self.spec.cores is not None and self.spec.pin_all and self.spec.resolved_device() == "cpu":
            affinity = parse_cores(self.spec.cores)
        self.process = ManagedProcess(argv, env=env, cwd=cwd, log_path=log, cpu_affinity=affinity,
                                      nice=self.spec.nice)
        self._t0 = time.monotonic()
        self.process.start()
        return self

    def start(self, timeout_s: float = 300.0) -> VllmServer:
        """Start vLLM and block until ``/health`` answers 200 (or fail with its log tail)."""
        self.launch()
        try:
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout_s: float) -> None:
        """Block until ``/health`` answers 200; fail early if the process exits."""
        if self.process is None:
            raise RuntimeError("launch() the server first")
        deadline = time.monotonic() + timeout_s
        health = self.url + "/health"
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServeError(
                    f"vLLM exited with code {code} before it was healthy; log {self.process.log_path}:\n"
                    f"{self.process.log_tail()}"
                )
            if _get_status(health, 2.0) == 200:
                self.startup_s = time.monotonic() - self._t0
                return
            if time.monotonic() > deadline:
                raise ServeError(
                    f"vLLM at {self.url} was not healthy within {timeout_s:g} s; log "
                    f"{self.process.log_path}:\n{self.process.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None

    def __enter__(self) -> VllmServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class VllmFleet:
    """``n`` vLLM instances of one spec, instance ``i`` pinned to core ``i % cpu_count``."""

    def __init__(self, n: int, spec: ServeSpec, *, cores: list[str] | None = None) -> None:
        if n < 1:
            raise ValueError(f"a fleet needs n >= 1 instances, got {n}")
        if cores is not None and len(cores) != n:
            raise ValueError(f"{len(cores)} core lists given for {n} instances")
        ncpu = os.cpu_count() or 1
        self.servers: list[VllmServer] = []
        for i in range(n):
            core = cores[i] if cores is not None else str(i % ncpu)
            s = ServeSpec(**{**spec.__dict__, "cores": core, "port": 0})
            self.servers.append(VllmServer(s))

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self, timeout_s: float = 600.0) -> VllmFleet:
        """Start every instance first, then wait for all (their startups overlap)."""
        try:
            for s in self.servers:
                s.launch()
            for s in self.servers:
                s.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def __enter__(self) -> VllmFleet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["SHAPES", "ServeError", "ServeSpec", "VllmFleet", "VllmServer", "build_command",
           "default_vllm_python", "parse_cores"]
