"""`mage_dbt.runs.concurrency.acquire`, the decisions of a run taking its concurrency slots: when it
says it waits, when `max_wait_seconds` fails it, and that a try timed out by a slow server while every
limit had room is tried again instead of failing the run (CI saw `max_wait_seconds: 1` fail the only
run of a pipeline). The server is played by `enter` and `holders` here: a slow server cannot be made
on demand; tests/test_concurrency_limits.py runs the same code against a real one."""

from __future__ import annotations

import pytest

from mage_dbt.runs.concurrency import SLOW_SERVER_RETRIES, SLOW_SERVER_SECONDS, SlotWaitTimeout, acquire


class Server:
    """Times out the first `timeouts` tries, each taking its whole timeout on `clock`, then grants;
    `full` is what `holders()` reports."""

    def __init__(self, timeouts: int, full: list[str]):
        self.timeouts, self.full, self.tries, self.now = timeouts, full, [], 0.0

    def clock(self):
        return self.now

    def enter(self, timeout):
        self.tries.append(timeout)
        if len(self.tries) <= self.timeouts:
            self.now += timeout
            raise TimeoutError

    def holders(self):
        return self.full


def test_slots_free_at_once_say_nothing():
    server, said = Server(0, []), []
    assert acquire(server.enter, server.holders, ["pipeline 'p'"], 1, said.append, server.clock) is None
    assert said == [] and server.tries == [1]


def test_a_slow_server_with_free_slots_is_tried_again_and_never_fails_the_run():
    server, said = Server(SLOW_SERVER_RETRIES, []), []
    assert acquire(server.enter, server.holders, ["pipeline 'p'"], 1, said.append, server.clock) is None
    assert said == []  # nobody held a slot: nothing to say
    assert server.tries[0] == 1 and all(t >= SLOW_SERVER_SECONDS for t in server.tries[1:])
    assert len(server.tries) == SLOW_SERVER_RETRIES + 1


def test_held_slots_make_the_run_say_it_waits_then_max_wait_fails_it_with_one_line():
    server, said = Server(10, ["pipeline 'p' (1/1 in use)"]), []
    with pytest.raises(SlotWaitTimeout) as error:
        acquire(server.enter, server.holders, ["pipeline 'p'"], 1, said.append, server.clock)
    assert said == ["waiting for a concurrency slot, at most 1 s: pipeline 'p' (1/1 in use)"]
    assert "for a concurrency slot (max_wait_seconds: 1): pipeline 'p' (1/1 in use)" in str(error.value)


def test_held_slots_without_a_bound_wait_until_granted():
    server, said = Server(1, ["pipeline 'p' (1/1 in use)"]), []
    waited = acquire(server.enter, server.holders, ["pipeline 'p'"], None, said.append, server.clock)
    assert waited == 2.0  # the first try's 2 s; the second was granted at once
    assert server.tries == [2.0, None] and said == ["waiting for a concurrency slot: pipeline 'p' (1/1 in use)"]


def test_a_server_that_never_grants_free_slots_ends_in_the_max_wait_error():
    server, said = Server(100, []), []
    with pytest.raises(SlotWaitTimeout):
        acquire(server.enter, server.holders, ["pipeline 'p'"], 1, said.append, server.clock)
    assert len(server.tries) == SLOW_SERVER_RETRIES + 1
    assert said == ["waiting for a concurrency slot, at most 1 s: pipeline 'p'"]
