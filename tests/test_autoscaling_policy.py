"""The audio-seconds autoscaling policy and the replica-side load it reads, in process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serve_app.autoscaling import AUDIO_PENDING, AUDIO_RATE, AudioLoad, AudioSecondsPolicy, replicas_for


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
