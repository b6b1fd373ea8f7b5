"""Zero-downtime config updates with the real CLI, as operators run them (docs/operations.md):
`ray start --head`, then `serve deploy` of configs/local.yaml and of edited copies, under a
steady stream of requests.

- a `user_config` change (batching) reaches the running model replica through
  reconfigure(): same replica, new batching in /readyz;
- scaling the ingress to two replicas and back (a lightweight `num_replicas` change) starts
  a replica behind the proxy, then drains one;
- no request fails during any of it.

The head runs in the foreground (`ray start --block`) as a child of this test, so stopping
it by PID stops exactly this cluster; `ray stop` would stop every Ray cluster on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import psutil
import pytest
import yaml

from serve_app.proxy_hooks import private_haproxy_env
from tests.cluster.conftest import PRIVATE_TMP, Load, describe, outcome, wait_model, wav_bytes
from tests.conftest import READY_DEADLINE_S, free_port, local_config, wait_until
from tests.speech import load_fixture, word_error_rate

BIN = Path(sys.executable).parent  # the venv's `ray` and `serve`
CLI_TIMEOUT_S = 180  # one CLI call (Python and Ray imports are slow on a busy machine)


class Head:
    """A one-node cluster from `ray start --head --block`, private ports and temp dir."""

    def __init__(self, name: str = "cli") -> None:
        self.temp_dir = PRIVATE_TMP / name
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.dashboard_url = f"http://127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            # Private test cluster bound to 127.0.0.1: no token (Ray 2.60 would otherwise
            # turn token auth on and every `serve` call would need RAY_AUTH_TOKEN).
            "RAY_AUTH_MODE": "disabled",
            # Nothing to drain at teardown; stop at once.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            # HAProxy's own ports, and files under our temp dir: stop() finds it by that path.
            **private_haproxy_env(self.temp_dir / "h", free_port),
        }
        self.log_path = self.temp_dir / "ray-start.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                str(BIN / "ray"), "start", "--head", "--block",
                f"--port={free_port()}",
                "--include-dashboard=true",  # `serve deploy` talks to the dashboard
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_url.rsplit(':', 1)[1]}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                "--num-cpus=2",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
            ],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_up(self) -> None:
        def dashboard_answers() -> bool:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            return httpx.get(f"{self.dashboard_url}/api/version", timeout=5).status_code == 200

        wait_until(dashboard_answers, 180, interval_s=1.0, what="the dashboard of ray start")

    def serve(self, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / "serve"), *args, "--address", self.dashboard_url],
            env=self.env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
        )
        assert result.returncode == 0, f"serve {args}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def deploy(self, config: dict) -> None:
        path = self.temp_dir / "asr.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.serve("deploy", str(path))

    def status(self) -> dict:
        return yaml.safe_load(self.serve("status"))

    def stop(self) -> None:
        """SIGTERM to `ray start --block` stops the processes it started; whatever of this
        cluster outlives it (all carry our private temp dir) is killed by PID."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self._log.close()
        marker = str(self.temp_dir)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(marker in part for part in proc.info["cmdline"] or ()):
                    proc.kill()
            except psutil.Error:
                pass


def app_settled(head: Head, replicas: dict[str, int]) -> bool:
    """`serve status`: the app RUNNING, every deployment HEALTHY with exactly these counts."""
    app = head.status()["applications"]["asr"]
    if app["status"] != "RUNNING":
        return False
    deployments = app["deployments"]
    return all(
        deployments[name]["status"] == "HEALTHY"
        and deployments[name]["replica_states"] == {"RUNNING": count}
        for name, count in replicas.items()
    )


def wait_settled(head: Head, replicas: dict[str, int], what: str) -> None:
    wait_until(lambda: app_settled(head, replicas), READY_DEADLINE_S, interval_s=2.0, what=what)


def test_a_job_survives_a_restart_of_the_whole_service(
        demo_model_path: Path, tmp_path: Path) -> None:
    """The embedded store (SQLite on local disk, no Redis): a job mid-way when the whole
    cluster stops completes once the service is started and deployed again. Runs before
    the module's shared cluster exists, so only one cluster is up at a time."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    config = local_config(demo_model_path, port)
    jobs = config["applications"][0]["args"]["jobs"]
    jobs.update(sqlite_path=str(tmp_path / "jobs-{app}.sqlite3"), max_chunks_in_flight=1)
    long = load_fixture("long_45s.wav")
    audio = np.concatenate([np.tile(long.audio, 5), np.zeros(16_000, np.float32)])
    jobs_url = f"{base_url}/v1/audio/transcriptions/jobs"

    first = Head("r1")  # short: HAProxy socket paths
    try:
        first.wait_up()
        first.deploy(config)
        wait_settled(first, {"ASRModel": 1, "ASRIngress": 1}, "the service to be RUNNING")
        submitted = httpx.post(jobs_url, files={"file": ("long.wav", wav_bytes(audio))},
                               timeout=120)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]

        def mid_way() -> bool:
            job = httpx.get(f"{jobs_url}/{job_id}", timeout=30).json()
            assert job["status"] in ("queued", "running"), job
            return 0 < job["progress"]["audio_seconds_done"]

        wait_until(mid_way, READY_DEADLINE_S, interval_s=0.2, what="the job to be mid-way")
    finally:
        first.stop()  # every process of the cluster: nothing of it outlives this
    stopped_at = time.time()

    second = Head("r2")
    try:
        second.wait_up()
        second.deploy(config)
        ended: dict = {}

        def job_ended() -> bool:
            try:
                ended.update(httpx.get(f"{jobs_url}/{job_id}", timeout=30).json())
            except httpx.HTTPError:
                return False  # not serving yet
            return ended.get("status") in ("completed", "failed", "cancelled")

        wait_until(job_ended, READY_DEADLINE_S, interval_s=1.0, what="the job to end")
        assert ended["status"] == "completed", ended
        # Begun by the first cluster, finished by the second (whether the first gave it
        # back as it stopped or its lease ran out).
        assert ended["started_at"] < stopped_at < ended["finished_at"], ended
        text = httpx.get(f"{jobs_url}/{job_id}/result", params={"response_format": "text"},
                         timeout=30).text
        assert word_error_rate([" ".join([long.text] * 5)], [text]) < 0.15, text
    finally:
        second.stop()


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    head = Head()
    try:
        head.wait_up()
        yield head
    finally:
        head.stop()


def test_config_updates_under_load_fail_no_request(head: Head, demo_model_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    config = local_config(demo_model_path, port)
    head.deploy(config)
    wait_settled(head, {"ASRModel": 1, "ASRIngress": 1}, "the first deploy to be RUNNING")
    before = wait_model(base_url)
    assert before["batching"]["max_batch_size"] == 8

    def updated(change) -> None:
        """Edit the deployments of the config, then `serve deploy` it."""
        change({d["name"]: d for d in config["applications"][0]["deployments"]})
        head.deploy(config)

    load = Load(base_url, threads=2).start()
    try:
        wait_until(lambda: load.count() >= 2, READY_DEADLINE_S, what="load to flow")

        # 1. Batching (user_config): applied in place by reconfigure(), no new replica.
        updated(lambda d: d["ASRModel"]["user_config"].update(max_batch_size=4))
        after = wait_model(
            base_url, lambda info: info["batching"]["max_batch_size"] == 4, "batching of 4"
        )
        assert after["replica"] == before["replica"], "a user_config change restarted the model"
        wait_settled(head, {"ASRModel": 1, "ASRIngress": 1}, "the batching change to settle")
        mark = load.count()
        wait_until(lambda: load.count() >= mark + 2, READY_DEADLINE_S, what="load after batching")

        # 2. Scale up: a second ingress replica joins behind the proxy.
        updated(lambda d: d["ASRIngress"].update(num_replicas=2))
        wait_settled(head, {"ASRModel": 1, "ASRIngress": 2}, "two ingress replicas")
        mark = load.count()
        wait_until(lambda: load.count() >= mark + 4, READY_DEADLINE_S, what="load after scale-up")

        # 3. Scale down: one ingress replica drains while requests keep coming.
        updated(lambda d: d["ASRIngress"].update(num_replicas=1))
        wait_settled(head, {"ASRModel": 1, "ASRIngress": 1}, "one ingress replica again")
        mark = load.count()
        wait_until(lambda: load.count() >= mark + 2, READY_DEADLINE_S, what="load after scale-down")
    finally:
        results = load.stop()

    failed = [describe(r) for r in results if outcome(r) != "ok"]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed}"
    final = wait_model(base_url)
    assert final["replica"] == before["replica"], "the model replica was restarted"
    assert final["batching"]["max_batch_size"] == 4
