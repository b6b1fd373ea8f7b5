"""Scaling on audio, not request counts: what a model replica reports, and a policy on it.

Serve's default policy divides ongoing requests by `target_ongoing_requests`, so a 30-s
chunk weighs as much as a 2-s one. Here each model replica reports the seconds of audio it
holds (queued for a batch or running) and the audio seconds it transcribes per second of
work, measured batch by batch (`record_autoscaling_stats`, every few seconds). The policy
asks for enough replicas that the audio held would be done within a target queueing
delay. Serve then applies the config's delays and bounds, and starts a replica at once
when requests wait at zero (its cold-start path, before any policy runs).

The policy runs inside the Serve controller, which unpickles it by value: this module
imports nothing beyond the standard library.
"""

from __future__ import annotations

import math
import statistics
import threading

AUDIO_PENDING = "audio_s_pending"  # seconds of audio a replica holds, queued or running
AUDIO_RATE = "audio_s_per_s"  # audio seconds it transcribes per second of model work
# Seconds of audio an ingress replica has admitted and not yet handed to the model: the
# rest of a long file, behind its bound on chunks in flight. No model replica sees it.
AUDIO_UNSENT = "audio_s_unsent"
# Audio of queued and running jobs not yet transcribed, read by every ingress replica from
# the one shared job store: the policy takes the largest report, not their sum.
JOBS_BACKLOG = "jobs_audio_s_backlog"
MODEL_DEPLOYMENT = "ASRModel"
# The weight of each new batch in the throughput average: about the last five batches.
RATE_SMOOTHING = 0.2


class AudioLoad:
    """A model replica's audio in hand and its measured speed; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending_s = 0.0
        self._rate: float | None = None

    def arrived(self, audio_s: float) -> None:
        with self._lock:
            self._pending_s += audio_s

    def finished(self, audio_s: float) -> None:
        with self._lock:
            self._pending_s = max(0.0, self._pending_s - audio_s)

    def batch_done(self, audio_s: float, busy_s: float) -> None:
        if busy_s <= 0 or audio_s <= 0:
            return
        rate = audio_s / busy_s
        with self._lock:
            self._rate = rate if self._rate is None else (
                RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * self._rate)

    @property
    def rate(self) -> float | None:
        """Audio seconds per second of work, None until a batch has been measured."""
        with self._lock:
            return self._rate

    def stats(self) -> dict[str, float]:
        """What `record_autoscaling_stats` returns; a rate of 0 means not measured yet."""
        with self._lock:
            return {AUDIO_PENDING: self._pending_s, AUDIO_RATE: self._rate or 0.0}


class AudioSecondsPolicy:
    """Replicas = audio held ÷ (a replica's measured audio seconds per second × the target
    queueing delay). Configure it as the model deployment's `autoscaling_config.policy`:

        policy:
          policy_function: serve_app.autoscaling:AudioSecondsPolicy
          policy_kwargs: {target_queue_delay_s: 3.0, default_audio_s_per_s: 10.0}
    """

    def __init__(self, target_queue_delay_s: float = 3.0, default_audio_s_per_s: float = 10.0,
                 jobs_target_s: float = 600.0):
        if min(target_queue_delay_s, default_audio_s_per_s, jobs_target_s) <= 0:
            raise ValueError("target_queue_delay_s, default_audio_s_per_s and jobs_target_s "
                             "must be > 0")
        self.target_queue_delay_s = target_queue_delay_s
        # Until a replica has measured itself (its first batches), this speed is assumed.
        self.default_audio_s_per_s = default_audio_s_per_s
        # Jobs are batch work: their backlog asks for enough replicas to clear it within
        # this long, not within the interactive queueing delay.
        self.jobs_target_s = jobs_target_s

    def __call__(self, ctx, waiting_elsewhere_s: float = 0.0,
                 jobs_backlog_s: float = 0.0) -> tuple[float, dict]:
        metrics = ctx.aggregated_metrics or {}
        pending = _total(metrics, AUDIO_PENDING) + waiting_elsewhere_s
        rates = [r for r in metrics.get(AUDIO_RATE, {}).values() if r and r > 0]
        rate = statistics.median(rates) if rates else self.default_audio_s_per_s
        # Replicas' worth of work: the interactive queue's and the jobs' add up.
        load = pending / self.target_queue_delay_s + jobs_backlog_s / self.jobs_target_s
        desired = math.ceil(load / rate - 1e-9)
        state = dict(ctx.policy_state or {})
        state.update(pending_audio_s=round(pending, 2), audio_s_per_s=round(rate, 2),
                     jobs_backlog_s=round(jobs_backlog_s, 2), desired=desired)
        return desired, state


class AudioSecondsAppPolicy:
    """The same rule, over the whole application: the audio the model replicas hold plus
    the audio still waiting in the ingress replicas (each reports it), so the rest of a
    long file asks for replicas before it reaches one. Every other deployment scales by
    Serve's default. Configure it as the application's `autoscaling_policy` (each
    deployment then needs an `autoscaling_config`, a fixed one may set min = max):

        autoscaling_policy:
          policy_function: serve_app.autoscaling:AudioSecondsAppPolicy
          policy_kwargs: {target_queue_delay_s: 3.0, default_audio_s_per_s: 10.0}
    """

    def __init__(self, target_queue_delay_s: float = 3.0, default_audio_s_per_s: float = 10.0,
                 model_deployment: str = MODEL_DEPLOYMENT, jobs_target_s: float = 600.0):
        self.model_policy = AudioSecondsPolicy(target_queue_delay_s, default_audio_s_per_s,
                                               jobs_target_s)
        self.model_deployment = model_deployment

    def __call__(self, contexts: dict) -> tuple[dict, dict]:
        # Imported here: this runs in the Serve controller, where Ray is at hand.
        from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

        waiting = sum(_total(ctx.aggregated_metrics or {}, AUDIO_UNSENT)
                      for ctx in contexts.values()
                      if ctx.deployment_name != self.model_deployment)
        jobs = max((value for ctx in contexts.values()
                    if ctx.deployment_name != self.model_deployment
                    for value in (ctx.aggregated_metrics or {}).get(JOBS_BACKLOG, {}).values()),
                   default=0.0)
        decisions, states = {}, {}
        for deployment_id, ctx in contexts.items():
            if ctx.deployment_name == self.model_deployment:
                desired, state = self.model_policy(ctx, waiting_elsewhere_s=waiting,
                                                   jobs_backlog_s=jobs)
                state["waiting_in_ingress_s"] = round(waiting, 2)
            else:
                desired, state = replica_queue_length_autoscaling_policy(ctx)
            decisions[deployment_id], states[deployment_id] = desired, dict(state or {})
        return decisions, states


def _total(metrics: dict, name: str) -> float:
    """A metric summed over the replicas reporting it."""
    return float(sum(metrics.get(name, {}).values()))


def replicas_for(pending_audio_s: float, audio_s_per_s: float, target_delay_s: float) -> int:
    """Fewest replicas that would finish `pending_audio_s` within `target_delay_s`."""
    return math.ceil(pending_audio_s / (audio_s_per_s * target_delay_s) - 1e-9)
