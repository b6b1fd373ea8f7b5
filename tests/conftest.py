"""Shared fixtures: the demo model, one local Ray instance per session, the service.

Ray takes seconds to start, so one instance serves every test that needs it. It always
starts fresh (`address="local"`), never joins a leftover cluster, and listens only on free
ports, so tests run beside a developer's service on port 8000.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from serve_app.ports import free_port  # noqa: F401 - tests import it from here

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / "data"
READY_DEADLINE_S = 600  # model load + warm-up on a busy 2-core machine


def wait_until(predicate, deadline_s: float, interval_s: float = 0.5, what: str = "condition"):
    """Poll instead of sleeping for a fixed time; fail with a clear message at the deadline."""
    end = time.monotonic() + deadline_s
    last_error: Exception | None = None
    while time.monotonic() < end:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling through transient errors
            last_error = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}: {last_error}")


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    from serve_app.demo_model import ensure_demo_model

    return ensure_demo_model(REPO_ROOT / "models" / "whisper-base")


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[dict]:
    import ray
    from ray import serve

    from serve_app.proxy_hooks import private_haproxy_env, proxy_env

    # HAProxy and the ingress replicas read these when they start; Ray's processes inherit
    # the driver's environment.
    os.environ.update(proxy_env())
    haproxy_dir = Path(tempfile.mkdtemp(prefix="hap-"))  # short: HAProxy's socket paths
    haproxy = private_haproxy_env(haproxy_dir, free_port)
    os.environ.update(haproxy)
    metrics_port = free_port()
    try:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _metrics_export_port=metrics_port,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
        try:
            yield {"metrics_port": metrics_port,
                   "haproxy_stats_port": int(haproxy["RAY_SERVE_HAPROXY_STATS_PORT"])}
        finally:
            serve.shutdown()
            ray.shutdown()
            if _redis is not None:
                _redis.stop()
    finally:
        shutil.rmtree(haproxy_dir, ignore_errors=True)
        shutil.rmtree(JOBS_DIR, ignore_errors=True)


TEST_BATCHING = {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}
# Jobs of every test application: their own SQLite files (one per application, in a
# temporary folder), and short leases so a lost replica's job is taken over within seconds. Callbacks may reach the tests' own receivers on loopback.
JOBS_DIR = Path(tempfile.gettempdir()) / f"asr-test-jobs-{os.getpid()}"
TEST_JOBS = {
    "sqlite_path": str(JOBS_DIR / "jobs-{app}.sqlite3"),
    "poll_interval_s": 1.0,
    "lease_s": 3.0,
    "callback_allow": ["127.0.0.1"],
    "callback_max_attempts": 3,
}
# The callbacks' signing secret (Standard Webhooks' form), in the environment that Ray's
# processes inherit, as in production.
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"test-secret-for-job-callbacks!!!").decode()
os.environ.setdefault("ASR_CALLBACK_SECRET", CALLBACK_SECRET)


def local_config(model_path: Path, http_port: int, **args_overrides) -> dict:
    """configs/local.yaml with a free port and the demo model's absolute path."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "local.yaml").read_text())
    config = copy.deepcopy(config)
    config["http_options"]["port"] = http_port
    app = config["applications"][0]
    app["args"]["model"]["id"] = str(model_path)
    # The tests check that Serve gathers chunks across requests, so they pin batches with
    # room and a wait (what local.yaml sets today) instead of following the YAML.
    model = next(d for d in app["deployments"] if d["name"] == "ASRModel")
    model["user_config"] = dict(TEST_BATCHING)
    # local.yaml autoscales one to two model replicas; the tests read one replica's totals
    # from /readyz to see what it batched, so they run exactly one. tests/cluster deploys
    # local.yaml's autoscaling as it is.
    model.pop("autoscaling_config", None)
    model["num_replicas"] = 1
    app["args"]["jobs"] = dict(TEST_JOBS)
    for section, values in args_overrides.items():
        app["args"].setdefault(section, {}).update(values)
    return config


def deploy(config: dict) -> None:
    from ray.serve._private.api import serve_start
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=HTTPOptions(**config["http_options"]).model_dump())
    client.deploy_apps(schema, _blocking=False)


def app_settled(name: str) -> bool:
    """The application RUNNING and every deployment HEALTHY with only RUNNING replicas (or
    none, scaled to zero): a rolling update done, no replica of an old version left to
    stop. A test that redeploys waits for this, so the next test does not meet replicas
    of two versions."""
    from ray import serve

    def value(state) -> str:
        return getattr(state, "value", state)  # Serve's enums print with their class name

    app = serve.status().applications.get(name)
    if app is None or value(app.status) != "RUNNING":
        return False
    return all(value(d.status) == "HEALTHY"
               and {value(state) for state in d.replica_states} <= {"RUNNING"}
               for d in app.deployments.values())


GLM_ROUTE = "/glm"
GLM_API_KEY = "test-key-for-the-glm-app"
GLM_OTHER_API_KEY = "another-test-key-for-the-glm-app"  # another client: sees none of the first's jobs
# Small enough that a few concurrent 45 s uploads overflow it.
GLM_MAX_QUEUED_AUDIO_S = 60.0
GLM_REALTIME_LIMITS = {"max_sessions": 2, "idle_timeout_s": 3, "max_session_s": 12}
GLM_MAX_QUEUED_JOB_BYTES = 1024 * 1024


def glm_api_keys_file(model_path: Path) -> Path:
    return model_path.parent / "api_keys.txt"


def _tiny_glm_application(name: str, route: str, model_path: Path, num_cpus: float, **args) -> dict:
    """The tiny GLM-ASR checkpoint served through the same code, with extra `args`."""
    return {
        "name": name,
        "route_prefix": route,
        "import_path": "serve_app.app:build_app",
        "args": {"model": {"id": str(model_path), "device": "cpu", "aliases": ["whisper-1"]},
                 "jobs": dict(TEST_JOBS), **args},
        "deployments": [
            {"name": "ASRModel", "ray_actor_options": {"num_cpus": num_cpus}},
            {"name": "ASRIngress", "ray_actor_options": {"num_cpus": num_cpus}},
        ],
    }


def tiny_glm_app(model_path: Path) -> dict:
    """A second application serving the tiny GLM-ASR checkpoint through the same code.

    It also carries the settings that would get in the way of the Whisper app's tests: API
    keys (from a secrets file) and a tight admission bound. Its replicas reserve almost no
    CPU so it fits beside configs/local.yaml on two cores.
    """
    keys_file = glm_api_keys_file(model_path)
    keys_file.write_text(f"{GLM_API_KEY}\n{GLM_OTHER_API_KEY}\n")
    return _tiny_glm_application(
        "glm", GLM_ROUTE, model_path, 0.1,
        auth={"api_keys_file": str(keys_file)},
        admission={"max_queued_audio_seconds": GLM_MAX_QUEUED_AUDIO_S, "retry_after_s": 1},
        # Live-session limits small enough to reach in a test.
        realtime=GLM_REALTIME_LIMITS,
        # A job queue of 1 MiB: one 44-s WAV fills it.
        jobs={**TEST_JOBS, "max_queued_bytes": GLM_MAX_QUEUED_JOB_BYTES},
    )


BROKEN_VAD_ROUTE = "/broken-vad"


def broken_vad_app(model_path: Path) -> dict:
    """The tiny GLM-ASR app with a speech detector that cannot load (a corrupt ONNX file):
    what /readyz and requests say when the ingress lacks its detector."""
    broken = model_path.parent / "broken_vad.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    return _tiny_glm_application(
        "broken-vad", BROKEN_VAD_ROUTE, model_path, 0.05, speech={"model_path": str(broken)}
    )


SHARED_ROUTE = "/shared"


def shared_cache_app(model_path: Path, redis_url: str) -> dict:
    """The tiny GLM-ASR app with two ingress replicas sharing their result cache and jobs
    in Redis (the URL reaches the replicas through the environment, as in production)."""
    app = _tiny_glm_application("shared", SHARED_ROUTE, model_path, 0.05)
    app["runtime_env"] = {"env_vars": {"ASR_REDIS_URL": redis_url}}
    ingress = next(d for d in app["deployments"] if d["name"] == "ASRIngress")
    ingress["num_replicas"] = 2
    # Jobs one chunk at a time: a long one is surely mid-way when a test kills its replica.
    app["args"]["jobs"]["max_chunks_in_flight"] = 1
    return app


_redis = None  # the session's Redis server (tests.redis_server), when redis-server exists


def session_redis():
    """One Redis for the whole session, started on first use; None without redis-server."""
    global _redis
    from tests.redis_server import RedisServer

    if _redis is None and RedisServer.installed():
        _redis = RedisServer()
    return _redis


def other_apps(glm_path: Path) -> list[dict]:
    """Every application beside configs/local.yaml's: a redeploy must list them all, or
    Serve removes the ones it leaves out."""
    apps = [tiny_glm_app(glm_path), broken_vad_app(glm_path)]
    redis = session_redis()
    if redis is not None:
        apps.append(shared_cache_app(glm_path, redis.url))
    return apps


def wait_ready(base_url: str) -> None:
    def ready() -> bool:
        return httpx.get(f"{base_url}/readyz", timeout=10).status_code == 200  # open route

    wait_until(ready, READY_DEADLINE_S, interval_s=1.0, what=f"{base_url} to be ready")


@pytest.fixture(scope="session")
def tiny_glm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_glm_asr import build_tiny_glm_asr

    return build_tiny_glm_asr(tmp_path_factory.mktemp("glm-asr-tiny"))


@pytest.fixture(scope="session")
def service_urls(ray_instance: dict, demo_model_path: Path, tiny_glm_path: Path) -> dict:
    """configs/local.yaml (Whisper demo model) at /, the tiny GLM-ASR app at /glm, and the
    GLM-ASR app without a working speech detector at /broken-vad (never ready)."""
    port = free_port()
    config = local_config(demo_model_path, port)
    config["applications"] += other_apps(tiny_glm_path)
    deploy(config)
    urls = {"whisper": f"http://127.0.0.1:{port}", "glm": f"http://127.0.0.1:{port}{GLM_ROUTE}"}
    if session_redis() is not None:
        urls["shared"] = f"http://127.0.0.1:{port}{SHARED_ROUTE}"
    for url in urls.values():
        wait_ready(url)
    urls["broken_vad"] = f"http://127.0.0.1:{port}{BROKEN_VAD_ROUTE}"
    return urls


@pytest.fixture(scope="session")
def service(service_urls: dict) -> str:
    """Base URL of the service from configs/local.yaml, ready to transcribe."""
    return service_urls["whisper"]


@pytest.fixture(scope="session")
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=300) as http:
        yield http


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
