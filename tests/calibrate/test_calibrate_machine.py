"""Other processes' CPU time (``calibrate.machine.OtherCpu`` on ``calibrate.procstat``): what
flags a busy machine."""
import os
import subprocess
import sys
import time

import pytest

from calibrate.machine import OtherCpu
from calibrate.procstat import tree_cpu_seconds

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc")

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def burn(seconds: float) -> None:
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


def test_a_tree_counts_its_reaped_children():
    before = tree_cpu_seconds(os.getpid())
    subprocess.run([sys.executable, "-c", BURN.format(s=0.6)], check=True)
    # the child's CPU time is the parent's once it was reaped (cutime), not lost
    assert tree_cpu_seconds(os.getpid()) - before >= 0.5


def test_cpu_used_outside_the_tree_counts_as_others():
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        others = OtherCpu(root=idle.pid).start()  # the measured tree: one sleeping process
        burn(0.6)  # this test's process is outside that tree
        used = others.stop()
    finally:
        idle.kill()
        idle.wait()
    assert used["other_cpu_s"] >= 0.5
    assert 0 < used["other_cpu_share"] <= 1.0 and used["stolen_cpu_s"] >= 0


def test_cpu_inside_the_tree_is_not_counted_as_others():
    """The same interval seen from two trees: this process's work is "others" only for the
    tree it is not in, and whatever else the machine did appears in both and cancels."""
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        mine, theirs = OtherCpu().start(), OtherCpu(root=idle.pid).start()
        burn(0.8)
        from_theirs, from_mine = theirs.stop(), mine.stop()
    finally:
        idle.kill()
        idle.wait()
    assert 0.6 <= from_theirs["other_cpu_s"] - from_mine["other_cpu_s"] <= 1.0


def test_the_quiet_wrapper_passes_the_status_through_and_records_the_figures(tmp_path, capsys):
    from calibrate.quiet import main

    out = tmp_path / "step.quiet.json"
    status = main(["--json", str(out), "--host-probe-s", "0.05", "--",
                   sys.executable, "-c", "import sys; sys.exit(3)"])
    assert status == 3
    import json

    rec = json.loads(out.read_text())
    assert rec["status"] == 3 and rec["command"][0] == sys.executable
    assert 0 <= rec["other_cpu_share"] <= 1 and isinstance(rec["busy"], bool)
    assert len(rec["loadavg_before"]) == 3
    # the host's hidden stalls, before and after (calibrate.host_probe)
    for key in ("host_stalls_before", "host_stalls_after"):
        assert 0 <= rec[key]["stall_share"] <= 1 and rec[key]["total_seconds"] == 0.05
    assert isinstance(rec["host_unsteady"], bool)
    err = capsys.readouterr().err
    assert "of the machine's CPU" in err and "hidden vCPU stalls" in err


def test_the_quiet_wrapper_can_skip_the_host_probe_and_refuses_a_negative_one(tmp_path, capsys):
    from calibrate.quiet import main

    out = tmp_path / "step.quiet.json"
    assert main(["--json", str(out), "--host-probe-s", "0", "--", sys.executable, "-c", "pass"]) == 0
    import json

    rec = json.loads(out.read_text())
    assert rec["host_stalls_before"] is None and "host_unsteady" not in rec
    with pytest.raises(SystemExit) as exc:
        main(["--host-probe-s", "-1", "--", "true"])
    assert exc.value.code == 2 and "--host-probe-s must be >= 0" in capsys.readouterr().err


def test_the_quiet_wrapper_needs_a_command(capsys):
    from calibrate.quiet import main

    with pytest.raises(SystemExit) as exc:
        main(["--"])
    assert exc.value.code == 2 and "no command given" in capsys.readouterr().err
    assert main(["--", "/nonexistent/command"]) == 127


ORPHANING = """
import subprocess, sys
# a grandchild that burns CPU and outlives its parent: it is orphaned while it runs
subprocess.Popen([sys.executable, "-c", {burn!r}])
"""


def test_an_orphaned_descendant_stays_in_the_tree_under_the_quiet_wrapper(tmp_path):
    """Run as a separate process: the wrapper adopts orphans (a subreaper), so the
    orphan's CPU is the measurement's own, not "other processes'"."""
    out = tmp_path / "q.json"
    script = ORPHANING.format(burn=BURN.format(s=0.8))
    # the command returns at once; its child burns 0.8 s more, orphaned, and ends
    # within the wrapper's wait, as a server's engine process ends after its API server
    subprocess.run([sys.executable, "-m", "calibrate.quiet", "--json", str(out), "--host-probe-s", "0.05", "--",
                    sys.executable, "-c", script], check=True)
    import json

    rec = json.loads(out.read_text())
    assert rec["status"] == 0
    # The orphan's 0.8 s are the tree's own (whatever else the machine ran meanwhile):
    # without the subreaper it would be reparented to init and its CPU lost from the tree.
    assert rec["own_cpu_s"] >= 0.7, rec


SIGNALLED = """
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda n, f: got.append(n))
signal.signal(signal.SIGINT, lambda n, f: got.append(n))
open({ready!r}, "w").close()
deadline = time.monotonic() + 30
while not got and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.3)  # a second delivery of the same signal would land here
open({got!r}, "w").write(",".join(signal.Signals(n).name for n in got))
sys.exit(130 if got else 0)
"""


@pytest.mark.parametrize("how", ["SIGTERM to the wrapper", "SIGINT to the wrapper", "SIGINT to its process group"])
def test_the_quiet_wrapper_passes_a_stop_on_to_its_command_once_and_still_records_it(tmp_path, how):
    """`kill` on a backgrounded `calibrate.quiet -- campaign` used to end the wrapper alone, leaving
    the campaign running and no record written; the terminal's Ctrl-C (SIGINT to the whole
    foreground group) must reach the command once, not twice."""
    import json
    import signal

    ready, got, out = tmp_path / "ready", tmp_path / "got", tmp_path / "q.json"
    name = how.split()[0]
    # Started as bash starts a background job: SIGINT ignored, and in a group of its own.
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "calibrate.quiet", "--json", str(out), "--host-probe-s", "0", "--",
         sys.executable, "-c", SIGNALLED.format(ready=str(ready), got=str(got))],
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the command never started"
        if how.endswith("process group"):
            os.killpg(wrapper.pid, signal.SIGINT)
        else:
            wrapper.send_signal(getattr(signal, name))
        assert wrapper.wait(timeout=30) == 130
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)
    assert got.read_text() == name  # exactly once
    rec = json.loads(out.read_text())
    assert rec["status"] == 130 and rec["signal_passed_on"] == name
