"""engine/hosts.py: the heartbeat check over the other processes of a multi-process run (with a
stand-in key-value store and clock; the real thing: tests/test_multiprocess.py)."""

import jax
import pytest

from jaxclip_fs import cli
from jaxclip_fs.engine import hosts
from jaxclip_fs.errors import ConfigError, DataError, ProgramHang


class Store:
    """The part of JAX's distributed client the monitor uses, in memory."""

    def __init__(self):
        self.data, self.down = {}, False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        if key in self.data and not allow_overwrite:
            raise RuntimeError(f"ALREADY_EXISTS: {key}")
        self.data[key] = value

    def key_value_dir_get(self, prefix):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        return [(k, v) for k, v in self.data.items() if k.startswith(prefix)]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def monitors(count=3, timeout=10.0):
    store, clock = Store(), Clock()
    return store, clock, [hosts.PeerMonitor(store, i, count, timeout, clock=clock)
                          for i in range(count)]


def test_beating_processes_are_fine_and_a_silent_one_is_named_after_the_timeout():
    store, clock, (m0, m1, m2) = monitors()
    for _ in range(30):  # 30 s of polls every second: everyone beats
        clock.now += 1.0
        assert [m.poll() for m in (m0, m1, m2)] == [None, None, None]
    for step in range(1, 12):  # process 2 is killed: it beats no more
        clock.now += 1.0
        message = m0.poll()
        assert m1.poll() == (message and message.replace("process 0 stops", "process 1 stops"))
        if step < 10:
            assert message is None, step
    assert message.startswith("error: process 2 of 3 stopped: no heartbeat for 10 s "
                              "(--peer-timeout 10; killed, crashed or its host lost); "
                              "process 0 stops too.")
    assert "start every process again with the same command to resume" in message
    assert "\n" not in message


def test_a_process_that_never_beats_is_lost_too():
    store, clock, (m0, m1) = monitors(count=2, timeout=5.0)
    clock.now += 4.0
    assert m0.poll() is None
    clock.now += 1.0
    assert "process 1 of 2 stopped: no heartbeat for 5 s" in m0.poll()


def test_a_published_failure_stops_the_others_at_their_next_poll():
    store, clock, (m0, m1, m2) = monitors()
    clock.now += 1.0
    assert m0.poll() is None
    hosts._set(store, f"{hosts.PREFIX}failed/1", "--out /x: exists and is not a directory")
    clock.now += 1.0
    message = m0.poll()
    assert message.startswith("error: process 1 of 3 failed (--out /x: exists and is not a "
                              "directory); process 0 stops too.")
    assert m1.poll() is None or "process 1" not in m1.poll()  # (not about itself)


def test_an_unreachable_coordinator_is_lost_after_the_timeout():
    store, clock, (m0, m1) = monitors(count=2, timeout=5.0)
    clock.now += 1.0
    assert m1.poll() is None
    store.down = True
    clock.now += 3.0
    assert m1.poll() is None  # a hiccup is not a loss
    clock.now += 3.0
    message = m1.poll()
    assert message.startswith("error: process 1 lost the coordinator (process 0) for 6 s "
                               "(UNAVAILABLE: Failed to send RPC")


def test_the_monitor_thread_reports_once_and_stop_silences_it():
    store, clock, (m0, m1) = monitors(count=2, timeout=0.5)
    seen = []
    m0.on_lost = seen.append
    m0.clock = __import__("time").monotonic
    m0.seen = {1: (None, m0.clock())}
    m0.interval = 0.01
    m0.start()
    m0._thread.join(timeout=30)
    assert not m0._thread.is_alive() and len(seen) == 1 and "process 1 of 2 stopped" in seen[0]
    quiet = hosts.PeerMonitor(store, 0, 2, 0.5, on_lost=seen.append)
    quiet.interval = 0.01
    quiet.stop()
    quiet.run()  # returns at once: stopped
    assert len(seen) == 1


@pytest.mark.parametrize("exc, status, needle", [
    (DataError("img3.png: unreadable"), 2, "error: img3.png: unreadable"),
    (ProgramHang("program gda/digits did not finish"), 3, "error: program gda/digits"),
    (KeyboardInterrupt(), 130, "interrupted (process 1): Finished programs are saved"),
    (ValueError("boom"), 1, "error: unexpected ValueError (process 1): boom"),
])
def test_a_failing_process_says_why_with_the_clis_statuses(exc, status, needle):
    store, clock, (m0, m1) = monitors(count=2)
    got, message = hosts._describe(exc, m1)
    assert got == status and needle in message.splitlines()[-1]


def test_a_failed_collective_names_the_lost_process():
    store, clock, (m0, m1) = monitors(count=2, timeout=5.0)
    m0.interval = 0.0
    ticks = iter(range(1000))
    m0.clock = lambda: 100.0 + next(ticks)  # every poll: one second later; process 1 silent
    failure = type("JaxRuntimeError", (RuntimeError,), {})(
        "UNKNOWN: Gloo AllGather failed: Connection closed by peer")
    status, message = hosts._describe(failure, m0)
    assert status == hosts.EXIT_PEER_LOST
    assert message.startswith("error: process 1 of 2 stopped: no heartbeat")


def test_start_checks_its_arguments_and_says_why_it_could_not_connect(monkeypatch):
    with pytest.raises(ConfigError, match="--peer-timeout must be > 0 seconds, got -1"):
        hosts.start("h:1", 2, 0, peer_timeout=-1, initialize=lambda **kw: None)

    def refused(**kwargs):
        raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out.\nId: PjRT_Client_Connect")

    with pytest.raises(ConfigError) as info:
        hosts.start("10.0.0.1:1234", 2, 1, initialize=refused)
    assert str(info.value) == ("--distributed: could not start with coordinator 10.0.0.1:1234 "
                               "(DEADLINE_EXCEEDED: Barrier timed out. Id: PjRT_Client_Connect)")
    calls = []

    def initialize(coordinator_address=None, num_processes=None, process_id=None,
                   heartbeat_timeout_seconds=100):
        calls.append((coordinator_address, num_processes, process_id, heartbeat_timeout_seconds))

    hosts.start("h:1", 2, 0, peer_timeout=60, initialize=initialize)
    assert calls == [("h:1", 2, 0, 180)]  # JAX's own check well after ours
    assert jax.process_count() == 1 and not hosts.active()  # (one process: nothing to watch)


def test_peer_timeout_needs_distributed(tmp_path, capsys):
    assert cli.main(["run", "--dataset", "digits", "--backbone", "tiny-vit", "--weights", "random",
                     "--out", str(tmp_path / "o"), "--peer-timeout", "5"]) == 2
    assert "need --distributed" in capsys.readouterr().err
