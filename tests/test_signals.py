"""EmergencyStop: real signals request a stop at the step boundary, a second one aborts, handlers are restored."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from ckptctl.training.signals import EmergencyAbort, EmergencyStop


def _deliver(signum):
    """Send a real signal to this process; Python runs the handler before the next bytecode."""
    os.kill(os.getpid(), signum)


def test_first_sigint_requests_a_stop_and_handlers_are_restored():
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with EmergencyStop() as stop:
        assert not stop.requested
        _deliver(signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT" and stop.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before_int
    assert signal.getsignal(signal.SIGTERM) is before_term


def test_sigterm_exit_code_is_143():
    with EmergencyStop() as stop:
        _deliver(signal.SIGTERM)
        with pytest.raises(SystemExit) as info:
            stop.exit()
    assert info.value.code == 143


def test_second_signal_aborts_at_once():
    reached = []
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a shell's background job
    with pytest.raises(EmergencyAbort) as info:
        with EmergencyStop():
            _deliver(signal.SIGINT)
            _deliver(signal.SIGINT)
            reached.append("after the second signal")
    assert info.value.code == 130 and reached == []
    assert isinstance(info.value, SystemExit)  # `except Exception` in a training loop does not swallow it
    assert signal.getsignal(signal.SIGINT) is before


def test_plain_api_request_and_exit():
    stop = EmergencyStop()
    stop.request(signal.SIGTERM)
    stop.request(signal.SIGINT)  # the first request wins
    assert stop.requested and stop.exit_code == 143
    with pytest.raises(SystemExit) as info:
        stop.exit()
    assert info.value.code == 143
    assert EmergencyStop().exit_code == 130


def test_outside_the_main_thread_installs_nothing(caplog):
    result = {}

    def worker():
        with EmergencyStop() as stop:
            result["handler"] = signal.getsignal(signal.SIGINT)
            stop.request()
            result["requested"] = stop.requested

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert result == {"handler": before, "requested": True}
    assert "outside the main thread" in caplog.text


def _interrupted_run(manager, start_step, interrupt_at, make_state):
    """A tiny training loop: rolling saves every 5 steps, Ctrl+C (a real SIGINT) at ``interrupt_at``."""
    with EmergencyStop() as stop:
        for step in range(start_step, start_step + 50):
            if step == interrupt_at:
                _deliver(signal.SIGINT)  # arrives mid-step; the loop finishes the step first
            if step % 5 == 0 and step != interrupt_at:
                manager.save(make_state(step=step), step=step)
            if stop.requested:
                manager.save_emergency(make_state(step=step), step=step)
                with pytest.raises(SystemExit) as info:
                    stop.exit()
                return info.value.code
    raise AssertionError("the loop was not interrupted")


def test_ten_interrupted_runs_leave_rolling_checkpoints_untouched(tmp_path):
    """The original document's Scenario 3: emergency retention is separate from rolling retention."""
    from ckptctl.training.manager import CheckpointManager
    from tests.factories import make_state

    manager = CheckpointManager(tmp_path, keep_last_n=3, keep_emergency_n=4)
    before = signal.getsignal(signal.SIGINT)
    for step in (5, 10, 15):
        manager.save(make_state(step=step), step=step)
    rolling_before = {p.name: p.read_bytes() for p in tmp_path.glob("rolling_*.pt")}
    latest_before = (tmp_path / "latest.pt").read_bytes()
    for run in range(10):
        emergencies_before = set(tmp_path.glob("emergency_*.pt"))
        step = 1000 * (run + 1) + 3
        assert _interrupted_run(manager, step, step, make_state) == 130
        new = set(tmp_path.glob("emergency_*.pt")) - emergencies_before
        assert len(new) == 1  # exactly one emergency checkpoint per Ctrl+C
        assert next(iter(new)).name.startswith(f"emergency_step_{step:06d}_")
    assert {p.name: p.read_bytes() for p in tmp_path.glob("rolling_*.pt")} == rolling_before
    assert (tmp_path / "latest.pt").read_bytes() == latest_before
    steps = sorted(int(p.name.split("_")[2]) for p in tmp_path.glob("emergency_*.pt"))
    assert steps == [7003, 8003, 9003, 10003]  # own retention: the last 4 emergency saves
    assert signal.getsignal(signal.SIGINT) is before
