"""Admission control from capacity, in process: the expected wait from the queue, the
model pool's measured speed and the replicas it may reach, and what is shed."""

from __future__ import annotations

import math

import pytest

from serve_app.admission import AdmissionController, PoolSize, expected_wait_s
from serve_app.config import AdmissionSettings
from serve_app.errors import APIError


def controller(**settings) -> AdmissionController:
    defaults = dict(max_expected_wait_s=60.0, assumed_audio_s_per_s=10.0, replica_start_s=15.0)
    return AdmissionController(AdmissionSettings(**{**defaults, **settings}))


def test_the_wait_counts_replicas_that_can_still_be_added() -> None:
    one = PoolSize(running=1, reachable=1)
    assert expected_wait_s(300.0, 10.0, one, 15.0) == 30.0
    # A second replica after 15 s: 150 s done by then, the other 150 s by two at 20 s/s.
    assert expected_wait_s(300.0, 10.0, PoolSize(1, 2), 15.0) == pytest.approx(22.5)
    # Little enough for the running replica alone: the new one would come too late.
    assert expected_wait_s(100.0, 10.0, PoolSize(1, 2), 15.0) == 10.0
    # At zero: the cold start, then the whole pool.
    assert expected_wait_s(100.0, 10.0, PoolSize(0, 2), 15.0) == pytest.approx(20.0)
    assert math.isinf(expected_wait_s(1.0, 10.0, PoolSize(0, 0), 15.0))
    # Two ingress replicas share the pool: each plans with half of it.
    assert expected_wait_s(300.0, 10.0, PoolSize(1, 1, ingress_replicas=2), 15.0) == 60.0


def test_requests_are_shed_only_when_no_reachable_pool_would_meet_the_bound() -> None:
    admission = controller()
    admission.update_pool(PoolSize(running=1, reachable=1))
    held = [admission.reserve(200.0)]  # idle: admitted whatever it weighs
    with pytest.raises(APIError) as refused:
        admission.reserve(500.0)  # 700 s at 10 s/s = 70 s > 60 s
    assert refused.value.status == 503 and refused.value.code == "overloaded"
    # Retry-After: about when enough has drained for it to fit, never under the floor.
    assert int(refused.value.headers["Retry-After"]) == 10
    # The same request fits once the deployment may add a replica: 15 s + 550 s / 20 s/s.
    admission.update_pool(PoolSize(running=1, reachable=2))
    held.append(admission.reserve(500.0))
    assert admission.expected_wait_s() == pytest.approx(42.5)
    for reservation in held:
        reservation.release()
    assert admission.queued_audio_seconds == 0.0


def test_the_measured_speed_replaces_the_assumed_one() -> None:
    admission = controller(assumed_audio_s_per_s=5.0)
    admission.update_pool(PoolSize(running=1, reachable=1))
    admission.reserve(100.0)
    assert admission.expected_wait_s() == 20.0
    admission.observe_rate(50.0)
    assert admission.expected_wait_s() == 2.0
    admission.observe_rate(None)  # a result without a measurement changes nothing
    admission.observe_rate(25.0)  # later reports are averaged in
    assert 25.0 < admission.replica_audio_s_per_s < 50.0


def test_one_file_larger_than_the_bounds_is_admitted_when_nothing_waits() -> None:
    admission = controller(max_queued_audio_seconds=100.0)
    big = admission.reserve(7200.0)  # 720 s expected, 72 × the memory bound
    with pytest.raises(APIError):
        admission.reserve(1.0)
    big.release()
    admission.reserve(7200.0).release()


def test_the_memory_bound_still_holds_with_a_fast_pool() -> None:
    admission = controller(max_queued_audio_seconds=100.0, assumed_audio_s_per_s=1000.0)
    admission.reserve(60.0)
    with pytest.raises(APIError):
        admission.reserve(60.0)


def test_a_reservation_follows_its_chunks_and_silence_stops_counting() -> None:
    admission = controller()
    reservation = admission.reserve(120.0)
    reservation.narrow_to(50.0)  # the detector found 50 s of speech in 120 s
    assert admission.queued_audio_seconds == 50.0 and admission.unsent_audio_seconds == 50.0
    reservation.sent(30.0)
    assert admission.unsent_audio_seconds == 20.0 and admission.queued_audio_seconds == 50.0
    reservation.done(30.0)
    assert admission.queued_audio_seconds == 20.0
    reservation.release()
    reservation.release()  # idempotent, and chunks finishing after it change nothing
    reservation.done(20.0)
    assert admission.queued_audio_seconds == 0.0 and admission.unsent_audio_seconds == 0.0


def test_without_replicas_or_a_way_to_add_them_the_retry_is_a_cold_start_away() -> None:
    admission = controller(retry_after_s=2)
    admission.update_pool(PoolSize(running=0, reachable=0))
    admission.reserve(1.0)
    with pytest.raises(APIError) as refused:
        admission.reserve(1.0)
    assert refused.value.headers["Retry-After"] == "15"
