"""Replicas that follow load, on a Ray instance of our own: the model scales from zero and
back to it without a probe waking it, scales up under load and down with requests in
flight, and a replica killed while another lives costs no request.

The model is the tiny GLM-ASR checkpoint (these tests are about what happens around the
model; it starts in seconds). The configs are configs/local.yaml and
configs/local-scale-to-zero.yaml as they are, with test-only autoscaling delays of a few
seconds instead of a minute, and everything polled, never slept on.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from tests.cluster.conftest import (
    CLIENT_TIMEOUT_S,
    Load,
    describe,
    deploy,
    long_fixture,
    outcome,
    post_audio,
    readyz,
    short_fixtures,
    unique_wav,
    wav_bytes,
)
from tests.conftest import READY_DEADLINE_S, REPO_ROOT, free_port, wait_until

# Seconds, not minutes: what the configs' delays become here.
TEST_AUTOSCALING = {
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 3,
}


def config_for(name: str, model_path: Path, port: int, slow_rounds: bool = False,
               policy_kwargs: dict | None = None, admission: dict | None = None,
               **autoscaling) -> dict:
    config = copy.deepcopy(yaml.safe_load((REPO_ROOT / "configs" / name).read_text()))
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["model"]["id"] = str(model_path)
    deployments = {d["name"]: d for d in app["deployments"]}
    model = deployments["ASRModel"]
    if slow_rounds:
        # One chunk of a request at a time, each waiting a second for batch mates: a long
        # request is surely still in flight when something happens to a replica.
        app["args"]["limits"]["max_chunks_in_flight"] = 1
        model["user_config"]["batch_wait_timeout_s"] = 1.0
    if "autoscaling_config" in model:
        model["autoscaling_config"].update(TEST_AUTOSCALING, **autoscaling)
    ingress = deployments["ASRIngress"]
    if "autoscaling_config" in ingress:  # it reports to an application-level policy
        ingress["autoscaling_config"].update(TEST_AUTOSCALING)
    if policy_kwargs:
        app["autoscaling_policy"]["policy_kwargs"].update(policy_kwargs)
    if admission:
        app["args"]["admission"].update(admission)
    # Small reservations: two model replicas and the ingress fit on two CPUs at once.
    model["ray_actor_options"] = {"num_cpus": 0.3}
    deployments["ASRIngress"]["ray_actor_options"] = {"num_cpus": 0.2}
    return config


def model_replicas() -> dict[str, int]:
    """The model deployment's replicas by state, as `serve status` reports them."""
    from ray import serve

    status = serve.status().applications["asr"].deployments["ASRModel"]
    return {str(getattr(k, "value", k)): v for k, v in status.replica_states.items()}


def running() -> int:
    return model_replicas().get("RUNNING", 0)


def chunks_held_by_running_replicas() -> dict[str, int]:
    """Each RUNNING model replica's actor name and the requests (chunks) it holds now.

    Asked of the replica actors themselves (a method Serve runs on its own thread), not of
    a router that may not have heard of a new replica yet.
    """
    import ray

    held = {}
    for name in running_replica_actor_names():
        actor = ray.get_actor(name, namespace="serve")
        held[name] = ray.get(actor.get_num_ongoing_requests.remote(), timeout=10)
    return held


def running_replica_actor_names() -> list[str]:
    """The actors of the model's RUNNING replicas, as the Serve controller lists them."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    details = ray.get(controller.get_deployment_details.remote("asr", "ASRModel"))
    return [r.actor_name for r in details.replicas
            if str(getattr(r.state, "value", r.state)) == "RUNNING"]


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    """One Ray instance and one HTTP port for the module (Serve keeps its first port)."""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _metrics_export_port=free_port(),
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    try:
        yield free_port()
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def service(http_port: int, tiny_glm_path: Path):
    """A function that deploys a config (replacing the last one) and returns its URL."""
    port = http_port

    def start(name: str, slow_rounds: bool = False, **options) -> str:
        config = config_for(name, tiny_glm_path, port, slow_rounds, **options)
        deploy(config)
        base_url = f"http://127.0.0.1:{port}"
        model = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ASRModel")
        expected_min = model["autoscaling_config"]["min_replicas"]

        def deployed() -> bool:  # this config in effect, not the one it replaced
            from ray import serve

            response = readyz(base_url)
            replicas = response.json().get("replicas", {}) if response.status_code == 200 else {}
            return (serve.status().applications["asr"].status == "RUNNING"
                    and replicas.get("min_replicas") == expected_min
                    and replicas.get("running", -1) >= expected_min)

        wait_until(deployed, READY_DEADLINE_S, what=f"{name} to be deployed and ready")
        return base_url

    return start


def test_scale_to_zero_and_back_without_waking_on_probes(service) -> None:
    base_url = service("local-scale-to-zero.yaml", downscale_to_zero_delay_s=3)
    ready = readyz(base_url).json()
    assert ready["model"]["scaled_to_zero"] is True, ready
    assert ready["replicas"]["running"] == 0 and ready["replicas"]["scales_to_zero"]

    # Probes at zero answer 200 and never start a replica.
    for _ in range(10):
        assert readyz(base_url).status_code == 200
    assert model_replicas() == {}, model_replicas()

    # The first request waits for a cold start and succeeds: no 503, no timeout. The service
    # stays ready while the pool wakes (a load balancer must not drop it for the start).
    probes = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(post_audio, base_url, unique_wav(short_fixtures()[0]))
        while not first.done():
            probes.append(readyz(base_url).status_code)
            wait([first], timeout=0.2)  # a probe every 0.2 s until the answer comes
        response = first.result()
    assert outcome(response) == "ok", describe(response)
    assert probes and set(probes) == {200}, probes
    assert running() == 1

    # Idle again: back to zero, and ready at zero.
    wait_until(lambda: model_replicas() == {}, 120, what="the model to scale back to zero")
    assert readyz(base_url).json()["model"]["scaled_to_zero"] is True
    response = post_audio(base_url, unique_wav(short_fixtures()[1]))
    assert outcome(response) == "ok", describe(response)


# Each config's policy, and a heavy load that needs two replicas of the tiny model under
# it: Serve's default on request counts (four clients, one request each per replica), and
# the opt-in application-level policy on audio seconds (eight clients of 2-minute files:
# ~1000 s of audio against a replica that does ~100-300 audio seconds a second). The light
# load (one client of ~12-s files) needs one replica under either.
POLICIES = {
    "local.yaml": ({"target_ongoing_requests": 1}, {"threads": 4}),
    "local-audio-autoscaling.yaml": (
        {"policy_kwargs": {"target_queue_delay_s": 1.0}}, {"threads": 8, "repeat": 10}),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_scale_up_under_load_and_down_with_requests_in_flight(service, name: str) -> None:
    options, heavy_load = POLICIES[name]
    base_url = service(name, **options)
    assert running() == 1
    heavy = Load(base_url, **heavy_load).start()
    try:
        wait_until(lambda: running() == 2, READY_DEADLINE_S, interval_s=0.5,
                   what="a second model replica under load")
    finally:
        heavy_results = heavy.stop()
    # Lighter load keeps requests in flight while the autoscaler removes a replica: the
    # one it stops finishes what it holds (graceful drain) before it goes.
    light = Load(base_url, threads=1).start()
    try:
        wait_until(lambda: model_replicas() == {"RUNNING": 1}, 120, interval_s=0.5,
                   what="back to one replica")
        mark = light.count()
        wait_until(lambda: light.count() >= mark + 2, READY_DEADLINE_S, what="load after scale-down")
    finally:
        light_results = light.stop()
    failed = [describe(r) for r in heavy_results + light_results if outcome(r) != "ok"]
    assert not failed, f"{len(failed)} requests failed while replicas came and went: {failed}"
    assert readyz(base_url).json()["replicas"]["max_replicas"] == 2


def test_a_killed_replica_costs_no_request_while_another_lives(service) -> None:
    import ray

    base_url = service("local.yaml", slow_rounds=True,
                       min_replicas=2, initial_replicas=2, max_replicas=2)
    wait_until(lambda: running() == 2, READY_DEADLINE_S, what="two model replicas")
    # Eight long requests (≥ 5 rounds each): both replicas hold chunks at any moment.
    payloads = [unique_wav(long_fixture(), repeat=3) for _ in range(8)]
    payloads += [unique_wav(f) for f in short_fixtures()]
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        futures = [pool.submit(post_audio, base_url, p) for p in payloads]
        # A short request answered: the model is at work, and the long ones are mid-way.
        wait_until(lambda: any(f.done() for f in futures), CLIENT_TIMEOUT_S,
                   interval_s=0.05, what="the load to reach the model")
        assert not all(f.done() for f in futures), "the load finished before the kill"
        # A RUNNING replica of this deployment (not one of an earlier test's that is still
        # draining away) that holds chunks now: each waits a second for batch mates, so
        # they are still there when the kill lands.
        held: dict[str, int] = {}

        def a_replica_holds_chunks() -> bool:
            held.clear()
            held.update(chunks_held_by_running_replicas())
            return max(held.values(), default=0) >= 1

        wait_until(a_replica_holds_chunks, CLIENT_TIMEOUT_S, interval_s=0.05,
                   what="a model replica holding chunks")
        victim = ray.get_actor(max(held, key=held.get), namespace="serve")
        ray.kill(victim, no_restart=True)
        results = [f.result(timeout=CLIENT_TIMEOUT_S + 30) for f in futures]
    failed = [describe(r) for r in results if outcome(r) != "ok"]
    assert not failed, f"requests lost with the replica: {failed}"
    # The victim held chunks when it was killed (chosen so, above). They come back either
    # through the ingress's own resend (counted in chunk_retries) or through Serve's router,
    # which resends a request its replica never started; 2 of 3 CI runs saw the former, so
    # the count is not asserted. What is asserted: no request was lost.
    wait_until(lambda: running() == 2, READY_DEADLINE_S, what="the killed replica replaced")


def test_the_ingress_reports_the_audio_it_has_not_sent_yet(service) -> None:
    """What the application-level policy adds to the replicas' own: the rest of a long file,
    held back by the bound on chunks in flight, which no model replica sees."""
    base_url = service("local-audio-autoscaling.yaml", slow_rounds=True)
    seen: list[float] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        answer = pool.submit(post_audio, base_url, unique_wav(long_fixture(), repeat=3))
        while not answer.done():
            seen.append(readyz(base_url).json()["admission"]["unsent_audio_s"])
            wait([answer], timeout=0.2)
        assert outcome(answer.result()) == "ok", describe(answer.result())
    assert max(seen) > 30.0, seen  # more than the one chunk at the model
    assert readyz(base_url).json()["admission"]["unsent_audio_s"] == 0.0


def test_a_flood_is_served_or_shed_at_once_never_left_waiting(service) -> None:
    """120 twenty-second files at once: each ends in a transcript or a well-formed 503 that
    comes before any of the work it would have waited for, and the service recovers."""
    base_url = service("local.yaml", admission={"max_expected_wait_s": 5})
    clip = np.concatenate([f.audio for f in short_fixtures()])
    twenty_s = np.resize(clip, 20 * 16_000)
    payloads = [wav_bytes(np.concatenate([twenty_s, np.zeros(160 * i, np.float32)]))
                for i in range(1, 121)]

    def timed_post(data: bytes) -> tuple[float, object]:
        started = time.monotonic()
        try:
            response = post_audio(base_url, data)
        except Exception as exc:  # noqa: BLE001 - reported below as a failure
            response = exc
        return time.monotonic() - started, response

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        results = list(pool.map(timed_post, payloads))
    def overloaded(response) -> bool:
        return (outcome(response) == "error" and response.status_code == 503
                and response.json()["error"]["code"] == "overloaded")

    served = [(s, r) for s, r in results if outcome(r) == "ok"]
    shed = [(s, r) for s, r in results if overloaded(r)]
    others = [describe(r) for s, r in results if outcome(r) != "ok" and not overloaded(r)]
    assert not others, others
    assert served and shed, (len(served), len(shed))
    for _, response in shed:
        assert int(response.headers["Retry-After"]) >= 1
    # Shed at once: every refusal came before the slowest admitted request was done.
    assert max(s for s, _ in shed) < max(s for s, _ in served)
    assert outcome(post_audio(base_url, payloads[0])) == "ok"  # recovered
