"""Faults under load on a two-node cluster of our own: a model replica killed, the model's
node lost and replaced, a redeploy that replaces replicas while a request is in flight.

Layout (all on this machine, via `ray.cluster_utils.Cluster`):
- head: 2 CPUs, the Serve controller, the HTTP proxy (HeadOnly) and the ingress (pinned
  by the custom resource `ingress_node`);
- a second node holding the custom resource `model_node`, where ASRModel must run.

The contract under every fault: each request ends, either 200 with a transcript or a 5xx
with the project's JSON error body; none hangs. Serve then replaces what was lost and a
new request succeeds.

The model is the tiny GLM-ASR checkpoint: these tests are about what happens around the
model, and it restarts in seconds where the Whisper demo model takes a minute on a busy
machine. The tests share one cluster and run in file order.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.cluster.conftest import (
    CLIENT_TIMEOUT_S,
    Load,
    deploy,
    long_fixture,
    model_info,
    outcome,
    post_audio,
    short_fixtures,
    unique_wav,
    wait_model,
)
from tests.conftest import READY_DEADLINE_S, free_port, local_config, wait_until

MODEL_NODE = {"model_node": 1}
INGRESS_NODE = {"ingress_node": 1}
# A lone chunk waits this long for others to batch with, so each round of model work takes
# at least this long: a multi-chunk request is surely still in flight when a fault hits,
# however fast the model is.
BATCH_WAIT_S = 5.0  # the most BatchingConfig allows


def fault_config(model_path: Path, http_port: int, model_cpus: float = 0.5,
                 ingress_cpus: float = 0.25) -> dict:
    """configs/local.yaml, with the model pinned to the model node and the ingress to the
    head. CPU reservations are small so that during a rolling replacement the old and the
    new replica of each deployment fit side by side. One chunk in flight per request makes
    a long request a sequence of model rounds."""
    config = local_config(model_path, http_port, limits={"max_chunks_in_flight": 1})
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    deployments["ASRModel"]["user_config"]["batch_wait_timeout_s"] = BATCH_WAIT_S
    deployments["ASRModel"]["ray_actor_options"] = {
        "num_cpus": model_cpus,
        "resources": {"model_node": 0.01},
    }
    deployments["ASRIngress"]["ray_actor_options"] = {
        "num_cpus": ingress_cpus,
        "resources": {"ingress_node": 0.01},
    }
    return config


def alive_actors(class_fragment: str) -> list:
    from ray.util.state import list_actors

    return [
        actor
        for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        if class_fragment in actor.class_name
    ]


def wait_model_busy(base_url: str, before: dict) -> None:
    """Until the model has started a batch since `before` (a /readyz model block)."""
    wait_until(
        lambda: (info := model_info(base_url)) and info["batches_run"] > before["batches_run"],
        READY_DEADLINE_S,
        interval_s=0.2,
        what="the model to start on the load",
    )


def assert_all_ended_cleanly(results: list) -> None:
    outcomes = [outcome(r) for r in results]
    bad = [o for o in outcomes if o not in ("ok", "error")]
    assert not bad, f"requests that neither succeeded nor failed with a 5xx JSON body: {bad}"


@pytest.fixture(scope="module")
def cluster_service(tiny_glm_path: Path) -> Iterator[dict]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            "num_cpus": 2,
            "resources": INGRESS_NODE,
            # The state API (list_actors) goes through the dashboard.
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
            "dashboard_agent_listen_port": free_port(),
            "metrics_export_port": free_port(),
        },
    )
    try:
        model_node = cluster.add_node(num_cpus=1, resources=MODEL_NODE)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        deploy(fault_config(tiny_glm_path, port))
        wait_model(base_url)
        yield {
            "cluster": cluster,
            "model_node": model_node,
            "base_url": base_url,
            "port": port,
            "model_path": tiny_glm_path,
        }
    finally:
        # No serve.shutdown(): it would drain (the ingress may wait hours for a request by
        # config); stopping the cluster's processes ends everything these tests started.
        ray.shutdown()
        cluster.shutdown()


def test_killed_model_replica_fails_requests_cleanly_and_is_replaced(cluster_service) -> None:
    base_url = cluster_service["base_url"]
    before = wait_model(base_url)
    (replica,) = alive_actors("ASRModel")
    fixtures = short_fixtures()
    payloads = [unique_wav(f) for f in fixtures[:4]]
    payloads += [unique_wav(long_fixture(), repeat=2) for _ in range(2)]  # 4 rounds each
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        futures = [pool.submit(post_audio, base_url, p) for p in payloads]
        wait_model_busy(base_url, before)
        assert not all(f.done() for f in futures), "the load finished before the kill"
        os.kill(replica.pid, signal.SIGKILL)
        _, not_done = wait(futures, timeout=CLIENT_TIMEOUT_S + 30)
    assert not not_done, f"{len(not_done)} requests hung after the replica was killed"
    assert_all_ended_cleanly([f.exception() or f.result() for f in futures])

    wait_model(base_url, lambda info: info["replica"] != before["replica"], "a new replica")
    assert outcome(post_audio(base_url, unique_wav(fixtures[0]))) == "ok"


def test_model_node_loss_under_load(cluster_service) -> None:
    cluster = cluster_service["cluster"]
    base_url = cluster_service["base_url"]
    before = wait_model(base_url)
    load = Load(base_url, threads=3).start()
    try:
        wait_until(lambda: load.count() >= 2, READY_DEADLINE_S, what="load to flow")
        # An abrupt loss (SIGKILL of the node's processes), as when a machine vanishes.
        cluster.remove_node(cluster_service["model_node"], allow_graceful=False)
        # With no node left for ASRModel the service reports not ready...
        wait_until(lambda: model_info(base_url) is None, READY_DEADLINE_S,
                   what="/readyz to report the model gone")
        # ...until a replacement node joins and Serve starts a replica there.
        cluster_service["model_node"] = cluster.add_node(num_cpus=1, resources=MODEL_NODE)
        wait_model(base_url, lambda info: info["replica"] != before["replica"],
                   "a replica on the new node")
        mark = load.count()
        wait_until(lambda: load.count() >= mark + 3, READY_DEADLINE_S, what="load to flow again")
    finally:
        results = load.stop()
    assert_all_ended_cleanly(results)
    assert outcome(post_audio(base_url, unique_wav(short_fixtures()[1]))) == "ok"


def test_redeploy_drains_the_request_in_flight(cluster_service) -> None:
    """A config change that replaces both deployments' replicas (new ray_actor_options)
    lets a long request that is in flight finish with 200: the old ingress keeps serving it
    (graceful shutdown) and its remaining chunks go to the new model replica."""
    base_url = cluster_service["base_url"]
    before = wait_model(base_url)
    (old_ingress,) = alive_actors("ASRIngress")
    # ~3 min: 7 chunks, one round of at least BATCH_WAIT_S each, so the request outlasts the
    # replacement by more than Serve's default graceful_shutdown_timeout_s (20 s): it passes
    # only with the configs' longer drain.
    payload = unique_wav(long_fixture(), repeat=4)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(post_audio, base_url, payload)
        wait_model_busy(base_url, before)
        deploy(fault_config(
            cluster_service["model_path"], cluster_service["port"],
            model_cpus=0.4, ingress_cpus=0.2,
        ))
        assert not future.done(), "the long request finished before the redeploy"
        wait_model(base_url, lambda info: info["replica"] != before["replica"], "a new replica")
        wait_until(
            lambda: {a.actor_id for a in alive_actors("ASRIngress")} - {old_ingress.actor_id},
            READY_DEADLINE_S,
            what="a new ingress replica",
        )
        response = future.result(timeout=CLIENT_TIMEOUT_S + 30)
    assert outcome(response) == "ok", response.text
    # The old ingress leaves once its request is done.
    wait_until(
        lambda: old_ingress.actor_id not in {a.actor_id for a in alive_actors("ASRIngress")},
        READY_DEADLINE_S,
        what="the old ingress replica to stop",
    )


def test_redeploy_ends_live_sessions_with_a_restart_code(cluster_service) -> None:
    """A draining ingress replica finishes the turn being spoken, then ends its live
    sessions with a `server_shutting_down` error event and close code 1012, and a
    reconnect reaches the new replica."""
    from websockets.exceptions import ConnectionClosed

    from tests.realtime_client import LiveClient, silence
    from tests.speech import load_fixture

    base_url = cluster_service["base_url"]
    wait_model(base_url)
    (old_ingress,) = alive_actors("ASRIngress")
    speech = load_fixture("fox_dog.wav").audio
    with LiveClient(base_url) as live:
        live.until_type("session.created")
        live.append(np.concatenate([silence(0.5), speech]))  # a turn left open
        live.until_type("input_audio_buffer.speech_started")
        deploy(fault_config(cluster_service["model_path"], cluster_service["port"],
                            model_cpus=0.4, ingress_cpus=0.3))
        closed = None
        deadline = time.monotonic() + READY_DEADLINE_S
        while closed is None and time.monotonic() < deadline:
            try:
                live.append(silence(0.2))  # a live microphone keeps sending
                live.receive(timeout_s=0.5)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                closed = exc
        assert closed is not None and closed.rcvd.code == 1012
    kinds = [e["type"] for e in live.events]
    assert live.of_type("error")[-1]["error"]["code"] == "server_shutting_down"
    # The open turn was committed and answered before the goodbye.
    assert "input_audio_buffer.committed" in kinds
    assert any(k.startswith("conversation.item.input_audio_transcription.") and
               k.endswith(("completed", "failed")) for k in kinds)
    wait_until(
        lambda: {a.actor_id for a in alive_actors("ASRIngress")} - {old_ingress.actor_id},
        READY_DEADLINE_S, what="a new ingress replica")
    with LiveClient(base_url) as again:
        assert again.receive()["type"] == "session.created"
