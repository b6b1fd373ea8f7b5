"""What a deployment's replicas are doing, as the Serve controller sees it: the model's
(readiness, admission control) and the ingress's own (its share of the model pool).

The ingress reads this instead of calling the model when that call would change what it
measures: at zero replicas a call would start one (a readiness probe must not wake a pool
that scales to zero), and in a pool that may scale to zero every call counts as load that
keeps it from idling. A replica is RUNNING only once its constructor (model load and
warm-up) has finished and Serve's health checks pass.

The controller's `get_deployment_details` is marked internal in Ray 2.60 (one actor call,
~10 ms); a failure to ask it is reported as "unknown", never raised.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

from serve_app.autoscaling import MODEL_DEPLOYMENT

# Probes and requests arrive often; the controller's view changes on a scale of seconds.
CACHE_S = 1.0


@dataclass(frozen=True)
class ReplicaCounts:
    running: int  # replicas RUNNING: loaded, warmed up, healthy
    starting: int  # being started (actor start, model load, warm-up)
    target: int  # what Serve (the autoscaler) aims for
    min_replicas: int
    max_replicas: int
    autoscaling: bool

    @property
    def scales_to_zero(self) -> bool:
        return self.autoscaling and self.min_replicas == 0

    @property
    def at_zero(self) -> bool:
        """Deliberately idle: nothing running and nothing asked for."""
        return self.running == 0 and self.target == 0

    def as_dict(self) -> dict:
        return {**asdict(self), "scales_to_zero": self.scales_to_zero}


class DeploymentReplicas:
    """One deployment's replicas (the model's unless told otherwise)."""

    def __init__(self, app_name: str, deployment: str = MODEL_DEPLOYMENT,
                 timeout_s: float = 2.0) -> None:
        self._app_name = app_name
        self._deployment = deployment
        self._timeout_s = timeout_s
        self._cached: tuple[float, ReplicaCounts | None] = (0.0, None)
        self._controller = None
        self.last_scaled_to_zero = False  # what the last answer said, for when none comes

    async def counts(self) -> ReplicaCounts | None:
        """The controller's current view, or None when it cannot be asked."""
        asked_at, counts = self._cached
        if time.monotonic() - asked_at < CACHE_S:
            return counts
        try:
            details = await asyncio.wait_for(self._ask_controller(), self._timeout_s)
            counts = _counts_from(details)
            self.last_scaled_to_zero = counts.scales_to_zero
        except Exception:  # noqa: BLE001 - "unknown" is an answer; the caller falls back
            counts = None
        self._cached = (time.monotonic(), counts)
        return counts

    async def state_of(self, replica_id: str) -> str | None:
        """One replica's state (RUNNING, STOPPING, ...) as the controller sees it now."""
        details = await asyncio.wait_for(self._ask_controller(), self._timeout_s)
        for replica in details.replicas:
            if getattr(replica, "replica_id", None) == replica_id:
                return str(getattr(replica.state, "value", replica.state))
        return None

    async def _ask_controller(self):
        if self._controller is None:
            import ray
            from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

            # A blocking GCS lookup: once, off the event loop.
            self._controller = await asyncio.to_thread(
                ray.get_actor, SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE
            )
        return await self._controller.get_deployment_details.remote(
            self._app_name, self._deployment
        )


def _field(config, name: str, default=None):
    """The schema holds autoscaling_config as a model or as a plain dict."""
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _counts_from(details) -> ReplicaCounts:
    states = [str(getattr(r.state, "value", r.state)) for r in details.replicas]
    config = details.deployment_config
    autoscaling = _field(config, "autoscaling_config")
    fixed = _field(config, "num_replicas")
    fixed = fixed if isinstance(fixed, int) else details.target_num_replicas
    return ReplicaCounts(
        running=states.count("RUNNING"),
        starting=sum(s in ("STARTING", "UPDATING", "RECOVERING") for s in states),
        target=details.target_num_replicas,
        min_replicas=_field(autoscaling, "min_replicas", 1) if autoscaling else fixed,
        max_replicas=_field(autoscaling, "max_replicas", 1) if autoscaling else fixed,
        autoscaling=bool(autoscaling),
    )
