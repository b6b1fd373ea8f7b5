"""What the benchmark and the soak share: audio, a private service, a load generator, stats.

The service is started the way the test suite starts it: a fresh local Ray instance
(`address="local"`, never a leftover cluster) in a temporary directory of its own, on free
ports, with configs/local.yaml deployed on a free HTTP port. Nothing here stops anything it
did not start.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import io
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import httpx
import numpy as np
import soundfile as sf
import yaml

from serve_app.ports import free_port  # noqa: F401 - the benchmarks import it from here

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
SPEECH_DIR = REPO_ROOT / "tests" / "data" / "speech"
CONFIG_PATH = REPO_ROOT / "configs" / "local.yaml"
DEMO_MODEL_DIR = REPO_ROOT / "models" / "whisper-base"
SAMPLE_RATE = 16_000  # the fixtures' rate and the rate every backend consumes
# Every engine the benchmark runs is told the language: greedy, same work on every side.
LANGUAGE = "en"
LONG_FIXTURE = "long_45s.wav"
TRANSCRIBE_PATH = "/v1/audio/transcriptions"
READY_DEADLINE_S = 900  # model load + warm-up on a busy 2-core machine
NO_STORE = {"Cache-Control": "no-store"}  # the service neither reads nor fills its cache


# ---- machine --------------------------------------------------------------------------


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, as `uptime` prints them."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    import ray
    import torch

    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def timestamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_json(prefix: str, payload: dict, stamp: str | None = None) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{prefix}-{stamp or timestamp()}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def wait_until(predicate, deadline_s: float, interval_s: float = 1.0, what: str = "condition"):
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
    raise TimeoutError(f"timed out after {deadline_s} s waiting for {what}: {last_error}")


# ---- audio ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    name: str
    audio: np.ndarray  # mono float32 at SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE


def load_clip(name: str) -> Clip:
    audio, rate = sf.read(SPEECH_DIR / name, dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE or audio.ndim != 1:
        raise ValueError(f"{name}: expected mono {SAMPLE_RATE} Hz, got {rate} Hz {audio.shape}")
    return Clip(name, audio)


def speech_clips(include_long: bool = False) -> list[Clip]:
    """The committed sentences (2-8 s each), in manifest order."""
    names = json.loads((SPEECH_DIR / "manifest.json").read_text(encoding="utf-8"))
    return [load_clip(n) for n in names if include_long or n != LONG_FIXTURE]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def fit(audio: np.ndarray, seconds: float) -> np.ndarray:
    """Cut or zero-pad to exactly `seconds`."""
    n = int(round(seconds * SAMPLE_RATE))
    if audio.size >= n:
        return audio[:n]
    return np.concatenate([audio, silence((n - audio.size) / SAMPLE_RATE)])


def join(audios: Iterable[np.ndarray], gap_s: float) -> np.ndarray:
    parts: list[np.ndarray] = []
    for audio in audios:
        if parts:
            parts.append(silence(gap_s))
        parts.append(audio)
    return np.concatenate(parts).astype(np.float32)


def wav_bytes(audio: np.ndarray) -> bytes:
    """32-bit float WAV: the service decodes exactly the samples the in-process runs see."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


# ---- statistics -----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latency_summary(latencies: list[float]) -> dict:
    return {
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "p99_s": percentile(latencies, 99),
        "mean_s": float(np.mean(latencies)) if latencies else None,
        "max_s": max(latencies) if latencies else None,
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---- load generator -------------------------------------------------------------------


@dataclass
class RequestSpec:
    kind: str  # a label for the report: "5s", "mixed", "invalid", ...
    data: bytes
    audio_s: float  # seconds of audio it carries (0 for an invalid upload)
    expect: str = "ok"  # "ok" (200) or "client_error" (4xx)
    headers: dict = field(default_factory=dict)
    fields: dict = field(default_factory=lambda: {"response_format": "json"})
    filename: str = "audio.wav"


@dataclass
class Outcome:
    kind: str
    expect: str
    audio_s: float
    started_s: float  # since the load began
    latency_s: float
    status: int | None  # None: no response at all (connection error, client timeout)
    error: str | None = None
    cache: str | None = None  # X-Cache: hit / miss

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def as_expected(self) -> bool:
        if self.expect == "ok":
            return self.status == 200
        return self.status is not None and 400 <= self.status < 500


async def _run_load(
    base_url: str,
    next_spec: Callable[[int], RequestSpec | None],
    concurrency: int,
    max_requests: int | None,
    duration_s: float | None,
    timeout_s: float,
    path: str,
) -> tuple[list[Outcome], float]:
    outcomes: list[Outcome] = []
    issued = 0
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            nonlocal issued
            while True:
                if max_requests is not None and issued >= max_requests:
                    return
                if duration_s is not None and time.perf_counter() - started >= duration_s:
                    return
                index = issued
                issued += 1
                spec = next_spec(index)
                if spec is None:
                    return
                t0 = time.perf_counter()
                try:
                    response = await client.post(
                        path,
                        files={"file": (spec.filename, spec.data, "audio/wav")},
                        data=spec.fields,
                        headers=spec.headers,
                    )
                    outcome = Outcome(
                        spec.kind, spec.expect, spec.audio_s, t0 - started,
                        time.perf_counter() - t0, response.status_code,
                        None if response.status_code == 200 else response.text[:300],
                        response.headers.get("x-cache"),
                    )
                except Exception as exc:  # noqa: BLE001 - every failure is counted, none raised
                    outcome = Outcome(
                        spec.kind, spec.expect, spec.audio_s, t0 - started,
                        time.perf_counter() - t0, None, f"{type(exc).__name__}: {exc}"[:300],
                    )
                outcomes.append(outcome)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - started


def run_load(
    base_url: str,
    next_spec: Callable[[int], RequestSpec | None],
    concurrency: int,
    *,
    max_requests: int | None = None,
    duration_s: float | None = None,
    timeout_s: float = 600.0,
    path: str = TRANSCRIBE_PATH,
) -> tuple[list[Outcome], float]:
    """Keep `concurrency` requests in flight until `max_requests` were sent or
    `duration_s` passed (requests already sent then finish); (outcomes, wall seconds)."""
    if max_requests is None and duration_s is None:
        raise ValueError("bound the load by max_requests, duration_s or both")
    return asyncio.run(
        _run_load(base_url, next_spec, concurrency, max_requests, duration_s, timeout_s, path)
    )


def summarize(outcomes: list[Outcome], wall_s: float) -> dict:
    ok = [o for o in outcomes if o.ok]
    by_status: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else "lost"
        by_status[key] = by_status.get(key, 0) + 1
    audio_ok = sum(o.audio_s for o in ok)
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "by_status": dict(sorted(by_status.items())),
        "lost": sum(1 for o in outcomes if o.status is None),
        "unexpected": sum(1 for o in outcomes if not o.as_expected),
        "wall_s": wall_s,
        "requests_per_s": len(outcomes) / wall_s if wall_s else None,
        "clips_per_s": len(ok) / wall_s if wall_s else None,
        "audio_s_per_s": audio_ok / wall_s if wall_s else None,
        **latency_summary([o.latency_s for o in ok]),
        "errors": sorted({o.error for o in outcomes if o.error and not o.as_expected})[:10],
    }


# ---- the service on a private Ray instance --------------------------------------------


def local_config(
    http_port: int,
    model_path: Path,
    user_config: dict | None = None,
    config_path: Path = CONFIG_PATH,
    autoscaling: dict | None = None,
) -> dict:
    """configs/local.yaml (or `config_path`) on a free port with the demo model's absolute
    path. Without `autoscaling` the model runs at the autoscaler's maximum from the start:
    throughput runs compare like with like, not whatever the autoscaler happens to hold.
    With it, the config's autoscaling stays, updated with those values."""
    config = copy.deepcopy(yaml.safe_load(config_path.read_text()))
    config["http_options"]["port"] = http_port
    app = config["applications"][0]
    app["args"]["model"]["id"] = str(model_path)
    model = next(d for d in app["deployments"] if d["name"] == "ASRModel")
    if autoscaling is not None:
        model["autoscaling_config"].update(autoscaling)
    elif "autoscaling_config" in model:
        model["num_replicas"] = model.pop("autoscaling_config")["max_replicas"]
    if user_config is not None:
        model["user_config"] = {**model.get("user_config", {}), **user_config}
    return config


def demo_model() -> Path:
    from serve_app.demo_model import ensure_demo_model

    return ensure_demo_model(DEMO_MODEL_DIR)


@dataclass(frozen=True)
class Engine:
    """How our backend runs the demo model: configs/local.yaml's choice, or a variant of it."""

    quantization: str = "none"  # model.quantization
    encoder_window: str = "full"  # model.encoder_window

    @property
    def label(self) -> str:  # "fp32", "int8", "int8 trimmed"
        precision = {"none": "fp32", "int8": "int8"}[self.quantization]
        return precision if self.encoder_window == "full" else f"{precision} {self.encoder_window}"

    @property
    def full_window(self) -> "Engine":
        """The same precision, every chunk padded to 30 s: faster-whisper's computation."""
        return Engine(self.quantization, "full")

    def load(self, threads: int, decode_threads: int | None = None, model: str | None = None):
        """The backend on CPU with `threads` torch threads; `model` defaults to the demo's."""
        import torch

        from serve_app.backends import load_backend

        torch.set_num_threads(threads)
        return load_backend(
            model or str(demo_model()), device="cpu", dtype=torch.float32,
            quantization=self.quantization, decode_threads=decode_threads,
            encoder_window=self.encoder_window,
        )


def deploy(config: dict) -> None:
    """Deploy a Serve config (the YAML's shape) to the Ray instance this process started."""
    from ray.serve._private.api import serve_start
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=HTTPOptions(**config["http_options"]).model_dump())
    client.deploy_apps(schema, _blocking=False)


def start_private_ray(prefix: str, dashboard: bool = False,
                      metrics_port: int | None = None) -> tuple[str, object]:
    """A fresh local Ray instance on free ports, with HAProxy's environment, in a short
    temporary folder of its own (Ray's and HAProxy's socket paths must stay short):
    (the folder, Ray's context)."""
    import ray

    from serve_app.proxy_hooks import private_haproxy_env, proxy_env

    temp_dir = tempfile.mkdtemp(prefix=prefix)
    os.environ.update(proxy_env())  # Ray's processes inherit the driver's environment
    os.environ.update(private_haproxy_env(Path(temp_dir), free_port))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    context = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=dashboard,
        **({"dashboard_port": free_port()} if dashboard else {}),
        _metrics_export_port=metrics_port or free_port(),
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        log_to_driver=False,
    )
    return temp_dir, context


def stop_private_ray(temp_dir: str | None) -> None:
    """Serve and the Ray instance this process started, and its temporary folder."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


class LocalService:
    """configs/local.yaml (or another local config) on a fresh local Ray instance; a
    context manager."""

    ROLES = {  # actor class name -> role in the report
        "ServeReplica:asr:ASRIngress": "ingress",
        "ServeReplica:asr:ASRModel": "model",
        "ProxyActor": "proxy",  # behind HAProxy, only its fallback
    }

    def __init__(
        self,
        user_config: dict | None = None,
        config_path: Path = CONFIG_PATH,
        autoscaling: dict | None = None,
    ) -> None:
        self.user_config = user_config
        self.config_path = config_path
        self.autoscaling = autoscaling  # None: replicas pinned (see local_config)
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._temp_dir: str | None = None
        self.dashboard_url: str | None = None
        self._config: dict | None = None

    def __enter__(self) -> "LocalService":
        model_path = demo_model()
        # The state API (list_actors) finds the replicas' PIDs through the dashboard.
        self._temp_dir, context = start_private_ray("asr-bench-", dashboard=True)
        # Our own dashboard: other local Ray instances may be running beside this one.
        self.dashboard_url = f"http://{context.dashboard_url}"
        try:
            self._config = local_config(self.http_port, model_path, self.user_config,
                                        self.config_path, self.autoscaling)
            deploy(self._config)
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        stop_private_ray(self._temp_dir)


    def _model_deployment(self) -> dict:
        assert self._config is not None
        return next(d for d in self._config["applications"][0]["deployments"]
                    if d["name"] == "ASRModel")

    def model_infos(self) -> list[dict] | None:
        """Each model replica's /readyz report. /readyz answers from one replica, the one
        Serve's router picks, so it is asked until every replica has answered."""
        replicas = self._model_deployment().get("num_replicas", 1)
        seen: dict[str, dict] = {}
        for _ in range(20 * replicas):
            response = httpx.get(f"{self.url}/readyz", timeout=30)
            info = response.json().get("model") if response.status_code == 200 else None
            if info is None:
                return None
            seen[info["replica"]] = info
            if len(seen) == replicas:
                return list(seen.values())
        return None

    def model_info(self) -> dict | None:
        """The model replicas' report, with batches, chunks and audio summed over them."""
        infos = self.model_infos()
        return _summed(infos) if infos else None

    def wait_ready(self) -> dict:
        if self.autoscaling is not None:
            # Replicas come and go (maybe none yet): ready is /readyz's 200, no model block.
            def ready() -> dict | None:
                response = httpx.get(f"{self.url}/readyz", timeout=30)
                return response.json() if response.status_code == 200 else None

            return wait_until(ready, READY_DEADLINE_S, what=f"{self.url}/readyz")
        return wait_until(self.model_info, READY_DEADLINE_S, what=f"{self.url}/readyz")

    def set_batching(self, **user_config) -> dict:
        """Change the model's user_config in place (Serve calls reconfigure, no restart)."""
        assert self._config is not None
        config = copy.deepcopy(self._config)
        model = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ASRModel")
        model["user_config"] = {**model["user_config"], **user_config}
        deploy(config)
        self._config = config

        def applied() -> dict | None:
            infos = self.model_infos()
            wanted = model["user_config"]
            if infos and all(info["batching"][k] == v for info in infos for k, v in wanted.items()):
                return _summed(infos)
            return None

        return wait_until(applied, READY_DEADLINE_S, what=f"batching {user_config}")

    def pids(self) -> dict[str, int]:
        return actor_pids(self.dashboard_url, self.ROLES)


def _summed(infos: list[dict]) -> dict:
    """One report for all model replicas: the first's, with the run totals summed."""
    total = dict(infos[0], replicas=len(infos))
    for key in ("batches_run", "chunks_run", "audio_s_run", "padded_s_run"):
        total[key] = sum(info[key] for info in infos)
    total["largest_batch"] = max(info["largest_batch"] for info in infos)
    return total


def actor_pids(address: str | None, roles: dict[str, str]) -> dict[str, int]:
    """Role -> PID of each live actor in `roles`, through Ray's state API. A role with
    several replicas gets one entry each: "model", "model-2", ..."""
    from ray.util.state import list_actors

    pids: dict[str, int] = {}
    for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000):
        actor = actor if isinstance(actor, dict) else asdict(actor)
        role = roles.get(actor.get("class_name", ""))
        if role and actor.get("pid"):
            key, n = role, 1
            while key in pids:
                n += 1
                key = f"{role}-{n}"
            pids[key] = int(actor["pid"])
    return pids


def rss_mb(pids: dict[str, int]) -> dict[str, float | None]:
    import psutil

    out: dict[str, float | None] = {}
    for role, pid in pids.items():
        try:
            out[role] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            out[role] = None  # the process is gone (replica restarted)
    return out
