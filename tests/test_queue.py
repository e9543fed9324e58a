"""The durable job queue on a real SQLite file: exclusive claims, fencing, reaping, client transitions."""

from __future__ import annotations

import json
import threading

import pytest

from tunelab.errors import InvalidRequest, NotFound
from tunelab.jobs.queue import LeaseLost, Queue
from tunelab.store.db import Database


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def queue(tmp_path):
    db = Database(tmp_path / "tunelab.db")
    db.migrate()
    return Queue(db, lease_seconds=30, max_attempts=2, clock=Clock())


def test_two_workers_never_claim_the_same_job(queue):
    for i in range(5):
        queue.add(f"ftjob-{i}", {"model": "m"}, status="queued")
    claimed, lock = [], threading.Lock()

    def worker(name):
        while (lease := queue.claim(name)) is not None:
            with lock:
                claimed.append(lease.job_id)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"ftjob-{i}" for i in range(5)]
    assert queue.claim("late") is None


def test_a_reaped_worker_is_fenced_off_and_the_new_owner_wins(queue):
    queue.add("ftjob-a", {}, status="queued")
    first = queue.claim("w1")
    queue.clock.now += 31  # w1 stalls past its lease
    assert queue.reap() == ["ftjob-a"] and queue.status("ftjob-a") == "queued"
    second = queue.claim("w2")
    assert second.attempt == 2
    with pytest.raises(LeaseLost):
        queue.heartbeat(first)
    with pytest.raises(LeaseLost):
        queue.finish(first, "failed", error={"code": "x"})
    queue.finish(second, "succeeded", fine_tuned_model="ft:m::x", trained_tokens=10)
    row = queue.db.query("SELECT * FROM jobs WHERE id = 'ftjob-a'")[0]
    assert (row["status"], row["fine_tuned_model"], row["lease_token"]) == ("succeeded", "ft:m::x", None)


def test_heartbeats_keep_the_lease_and_report_client_requests(queue):
    queue.add("ftjob-b", {}, status="queued")
    lease = queue.claim("w1")
    for _ in range(5):
        queue.clock.now += 20
        assert queue.heartbeat(lease) is None
        assert queue.reap() == []
    assert queue.request("ftjob-b", "pause") == "running"
    assert queue.heartbeat(lease) == "pause"
    queue.finish(lease, "paused")
    assert queue.status("ftjob-b") == "paused"
    assert queue.request("ftjob-b", "resume") == "queued"


def test_a_job_that_keeps_dying_fails_with_the_cause(queue):
    queue.add("ftjob-c", {}, status="queued")
    for _ in range(2):
        queue.claim("w")
        queue.clock.now += 31
        queue.reap()
    row = queue.db.query("SELECT status, error FROM jobs WHERE id = 'ftjob-c'")[0]
    assert row["status"] == "failed" and json.loads(row["error"])["code"] == "worker_lost"


@pytest.mark.parametrize("status, action, result", [
    ("queued", "cancel", "cancelled"), ("validating_files", "cancel", "cancelled"), ("paused", "cancel", "cancelled"),
    ("paused", "resume", "queued"),
])
def test_valid_client_transitions(queue, status, action, result):
    queue.add("ftjob-d", {}, status=status)
    assert queue.request("ftjob-d", action) == result == queue.status("ftjob-d")


@pytest.mark.parametrize("status, action", [
    ("succeeded", "cancel"), ("failed", "cancel"), ("cancelled", "cancel"), ("queued", "pause"),
    ("paused", "pause"), ("running", "resume"), ("succeeded", "resume"),
])
def test_invalid_client_transitions_change_nothing(queue, status, action):
    queue.add("ftjob-e", {}, status=status)
    with pytest.raises(InvalidRequest, match=f"cannot {action} job ftjob-e: it is {status}"):
        queue.request("ftjob-e", action)
    assert queue.status("ftjob-e") == status


def test_unknown_job_is_not_found(queue):
    with pytest.raises(NotFound):
        queue.request("ftjob-nope", "cancel")


def test_a_job_given_back_carries_out_the_cancel_or_pause_asked_for_meanwhile(queue):
    for job_id, action in (("ftjob-c", "cancel"), ("ftjob-p", "pause")):
        queue.add(job_id, {}, status="queued")
        lease = queue.claim("w")
        assert queue.request(job_id, action) == "running"
        assert queue.release(lease, error={"code": "x"}) == {"cancel": "cancelled", "pause": "paused"}[action]
    queue.add("ftjob-r", {}, status="queued")
    queue.claim("w")
    queue.request("ftjob-r", "cancel")
    with pytest.raises(InvalidRequest, match="being cancelled"):  # a pause never downgrades a cancel
        queue.request("ftjob-r", "pause")
    queue.clock.now += 31
    assert queue.reap() == ["ftjob-r"] and queue.status("ftjob-r") == "cancelled"


def test_a_graceful_stop_uses_no_attempt(queue):
    queue.add("ftjob-g", {}, status="queued")
    for _ in range(3):  # more stops than max_attempts (2)
        lease = queue.claim("w")
        assert lease.attempt == 1 and queue.release(lease, count_attempt=False) == "queued"
    assert queue.release(queue.claim("w"), error={"code": "died"}) == "queued"
    assert queue.release(queue.claim("w"), error={"code": "died"}) == "failed"
