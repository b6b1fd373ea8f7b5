"""The audio-seconds autoscaling policy and the replica-side load it reads, in process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serve_app.autoscaling import (
    AUDIO_PENDING,
    AUDIO_RATE,
    AUDIO_UNSENT,
    JOBS_BACKLOG,
    AudioLoad,
    AudioSecondsAppPolicy,
    AudioSecondsPolicy,
    replicas_for,
)


def context(pending: dict[str, float], rates: dict[str, float]) -> SimpleNamespace:
    """What Serve's controller hands a policy: per-replica averages of what replicas reported."""
    return SimpleNamespace(aggregated_metrics={AUDIO_PENDING: pending, AUDIO_RATE: rates},
                           policy_state={})


def test_replicas_follow_audio_not_request_counts() -> None:
    policy = AudioSecondsPolicy(target_queue_delay_s=3.0, default_audio_s_per_s=10.0)
    # Two replicas measured at 10 audio-s/s hold 90 s: 90 / (10 × 3) = 3 replicas.
    desired, state = policy(context({"a": 60.0, "b": 30.0}, {"a": 10.0, "b": 10.0}))
    assert desired == 3 and state["pending_audio_s"] == 90.0
    # The same number of chunks, but 2-s ones: one replica is plenty.
    assert policy(context({"a": 4.0, "b": 2.0}, {"a": 10.0, "b": 10.0}))[0] == 1
    assert policy(context({}, {}))[0] == 0  # idle: Serve's min_replicas decides


def test_unmeasured_replicas_are_assumed_at_the_default_speed() -> None:
    policy = AudioSecondsPolicy(target_queue_delay_s=1.0, default_audio_s_per_s=5.0)
    assert policy(context({"a": 12.0}, {"a": 0.0}))[0] == 3  # 12 / (5 × 1)
    with pytest.raises(ValueError):
        AudioSecondsPolicy(target_queue_delay_s=0)


def test_replicas_for_rounds_up_only_past_the_target() -> None:
    assert replicas_for(30.0, 10.0, 3.0) == 1
    assert replicas_for(30.1, 10.0, 3.0) == 2


def test_a_replica_counts_its_audio_and_measures_its_speed() -> None:
    load = AudioLoad()
    assert load.stats() == {AUDIO_PENDING: 0.0, AUDIO_RATE: 0.0}
    load.arrived(5.0)
    load.arrived(25.0)
    load.batch_done(audio_s=30.0, busy_s=2.0)  # 15 audio-s/s
    load.finished(5.0)
    assert load.stats() == {AUDIO_PENDING: 25.0, AUDIO_RATE: 15.0}
    load.batch_done(audio_s=10.0, busy_s=2.0)  # 5 audio-s/s pulls the average down a little
    assert 10.0 < load.stats()[AUDIO_RATE] < 15.0


def app_context(name: str, metrics: dict, current: int = 1, requests: float = 0.0):
    """An AutoscalingContext as Serve 2.60 builds it, for the fields the policies read."""
    from ray.serve.config import AutoscalingConfig

    return SimpleNamespace(
        deployment_name=name, aggregated_metrics=metrics, policy_state={},
        current_num_replicas=current, target_num_replicas=current,
        total_num_requests=requests, config=AutoscalingConfig(target_ongoing_requests=2),
    )


def test_the_application_policy_counts_audio_still_waiting_in_the_ingress() -> None:
    policy = AudioSecondsAppPolicy(target_queue_delay_s=3.0, default_audio_s_per_s=10.0)
    model = app_context("ASRModel", {AUDIO_PENDING: {"m": 30.0}, AUDIO_RATE: {"m": 10.0}})
    # The replica holds 30 s (one replica's worth in 3 s); the ingress replicas hold the
    # other 150 s of a long file: 180 / (10 × 3) = 6 replicas, not 1.
    ingress = app_context("ASRIngress", {AUDIO_UNSENT: {"i1": 120.0, "i2": 30.0}},
                          current=2, requests=4.0)
    decisions, states = policy({"model": model, "ingress": ingress})
    assert decisions["model"] == 6
    assert states["model"]["waiting_in_ingress_s"] == 150.0
    # The ingress itself scales on Serve's default: 4 requests at a target of 2 each.
    assert decisions["ingress"] == pytest.approx(2.0)
    # Without the ingress's report, only what the replica holds counts.
    assert AudioSecondsPolicy(3.0, 10.0)(model)[0] == 1


def test_the_job_backlog_asks_for_replicas_to_clear_it_within_its_own_target() -> None:
    policy = AudioSecondsAppPolicy(target_queue_delay_s=3.0, default_audio_s_per_s=10.0,
                                   jobs_target_s=600.0)
    model = app_context("ASRModel", {AUDIO_PENDING: {"m": 30.0}, AUDIO_RATE: {"m": 10.0}})
    # Every ingress replica reads the same shared backlog (two hours of jobs): counted
    # once, not once per replica. 30 s / (10 × 3) + 7200 s / (10 × 600) = 1 + 1.2 -> 3.
    ingress = app_context("ASRIngress", {AUDIO_UNSENT: {"i1": 0.0, "i2": 0.0},
                                         JOBS_BACKLOG: {"i1": 7200.0, "i2": 7200.0}},
                          current=2, requests=1.0)
    decisions, states = policy({"model": model, "ingress": ingress})
    assert decisions["model"] == 3
    assert states["model"]["jobs_backlog_s"] == 7200.0
    # Jobs alone never ask for more than clearing them in their target takes.
    idle = app_context("ASRModel", {AUDIO_PENDING: {"m": 0.0}, AUDIO_RATE: {"m": 10.0}})
    assert policy({"model": idle, "ingress": ingress})[0]["model"] == 2
