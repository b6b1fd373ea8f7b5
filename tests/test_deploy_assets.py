"""Deployment assets stay consistent with the code: no Ray cluster needed, well under a second.

- Every metric a Grafana panel, dashboard variable or alert rule queries is one that exists:
  a metric of serve_app/metrics.py under the name Ray exports it, or a Ray Serve built-in
  from the allowlist below, itself checked against the installed Ray's source.
- The KubeRay RayService embeds exactly configs/prod.yaml, and render.py sees no drift.
- Redis (redis.yaml) never evicts jobs and keeps them across restarts, its password and URL
  come only from Secrets, and only the Ray cluster's pods reach it.

How Ray 2.60 names exported metrics (read in ray/_private/telemetry/
open_telemetry_metric_recorder.py and the OpenTelemetry Prometheus exporter, then confirmed
by scraping a local Ray instance's metrics export port):
- every name gains the `ray_` prefix;
- Counter: `_total` is appended unless the name already ends in `_total` (never doubled:
  `asr_requests_total` exports as `ray_asr_requests_total`, `foo` as `ray_foo_total`);
- Histogram: `_bucket` (with `le`), `_sum`, `_count`;
- Gauge: the name as is.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "asr-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
RENDER = ROOT / "deploy" / "kuberay" / "render.py"
PROD = ROOT / "configs" / "prod.yaml"
METRICS_MODULE = ROOT / "serve_app" / "metrics.py"

# Ray Serve's own metrics the assets use: (name as created in Ray's source, kind). Each was
# read in ray/serve/_private/ (file noted); the test below re-checks that the installed Ray
# still defines it, so a Ray upgrade that renames one fails here rather than in Grafana.
SERVE_BUILTINS = {
    # deployment_state.py: 1 per healthy replica (per-replica tag by default), else 0.
    "serve_deployment_replica_healthy": "gauge",
    # deployment_state.py: 0 UNKNOWN, 1 DEPLOY_FAILED, 2 UNHEALTHY, 3 UPDATING,
    # 4 UPSCALING, 5 DOWNSCALING, 6 HEALTHY.
    "serve_deployment_status": "gauge",
    # deployment_state.py: the replica count the autoscaler aims for.
    "serve_autoscaling_target_replicas": "gauge",
    # router.py: requests waiting in a caller's router for a replica (per handle).
    "serve_deployment_queued_queries": "gauge",
    # replica.py: requests a replica is processing now.
    "serve_replica_processing_queries": "gauge",
    # request_ingress_metrics.py: f"serve_num_{protocol_name}_requests" at the proxy.
    "serve_num_http_requests": "counter",
}

# PromQL words that look like identifiers but are not metric names.
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*")


def exported_names(name: str, kind: str) -> set[str]:
    """The series names Ray 2.60 exports for one metric (see the module docstring)."""
    name = f"ray_{name}"
    if kind == "counter":
        return {name if name.endswith("_total") else f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    assert kind == "gauge", kind
    return {name}


def project_metrics() -> dict[str, str]:
    """name -> kind for every Counter/Gauge/Histogram created in serve_app/metrics.py."""
    kinds = {
        "Counter": "counter",
        "Gauge": "gauge",
        "RefreshedGauge": "gauge",  # serve_app.metrics' Gauge that keeps idle values exported
        "Histogram": "histogram",
    }
    found = {}
    for node in ast.walk(ast.parse(METRICS_MODULE.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in kinds:
            (first, *_) = node.args
            found[first.value] = kinds[node.func.id]
    return found


def known_names() -> set[str]:
    names: set[str] = set()
    for name, kind in {**project_metrics(), **SERVE_BUILTINS}.items():
        names |= exported_names(name, kind)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads.

    Strings, label matchers, range/subquery brackets and grouping label lists are removed
    first; what remains is identifiers, which are function calls (followed by `(`),
    keywords, or metric names.
    """
    text = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables: $__rate_interval, ${x}
    text = STRING.sub('""', text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside collapsed rows
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    board = dashboard()
    for panel in panels(board):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
            assert match, f"variable {variable['name']}: unexpected query {query!r}"
            queries.append((f"variable {variable['name']}", match.group(1)))
    return queries


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# ---- the name extraction itself -----------------------------------------------------------


def test_metric_names_extracts_only_metrics() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (application, le) (rate(ray_a_bucket{x="y(z)"}[5m])))'
        " / on (application) group_left sum(rate(ray_b_total[$__rate_interval] offset 1h))"
        " > 0.8 * 2048 or absent(ray_c) unless ray_d"
    )
    assert metric_names(expr) == {"ray_a_bucket", "ray_b_total", "ray_c", "ray_d"}
    assert metric_names('ray_x{le="1e3"} > 1e3') == {"ray_x"}


def test_exported_names_follow_ray_rules() -> None:
    assert exported_names("asr_requests_total", "counter") == {"ray_asr_requests_total"}
    assert exported_names("serve_num_http_requests", "counter") == {
        "ray_serve_num_http_requests_total"
    }
    assert exported_names("asr_cache_bytes", "gauge") == {"ray_asr_cache_bytes"}
    assert exported_names("x_seconds", "histogram") == {
        "ray_x_seconds_bucket",
        "ray_x_seconds_sum",
        "ray_x_seconds_count",
    }


def test_project_metrics_are_all_found() -> None:
    metrics = project_metrics()
    assert metrics["asr_requests_total"] == "counter"
    assert metrics["asr_request_latency_seconds"] == "histogram"
    assert metrics["asr_cache_bytes"] == "gauge"
    # Only counters may end in `_total`: Prometheus reads the suffix as "counter".
    for name, kind in metrics.items():
        assert kind == "counter" or not name.endswith("_total"), name


def test_serve_builtins_exist_in_installed_ray() -> None:
    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations
    serve_dir = Path(next(iter(spec.submodule_search_locations))) / "serve"
    source = "\n".join(p.read_text() for p in serve_dir.rglob("*.py"))
    for name in SERVE_BUILTINS:
        templated = name.replace("_http_", "_{protocol_name}_")
        assert f'"{name}"' in source or f'f"{templated}"' in source, name


# ---- Grafana ----------------------------------------------------------------------------


def test_dashboard_loads_and_every_panel_has_a_query() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    names = [v["name"] for v in board["templating"]["list"]]
    assert {"datasource", "application", "deployment"} <= set(names)
    datasource = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    ids = []
    for panel in panels(board):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("where, expr", dashboard_queries())
def test_dashboard_queries_name_only_existing_metrics(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    assert names <= known_names(), f"{where}: unknown {sorted(names - known_names())}"


def test_dashboard_covers_every_project_metric() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    for name, kind in project_metrics().items():
        assert exported_names(name, kind) & used, f"no panel shows {name}"


def test_latency_panels_use_histogram_quantile_over_buckets() -> None:
    exprs = [expr for _, expr in dashboard_queries()]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            f"histogram_quantile({quantile}," in e and "ray_asr_request_latency_seconds_bucket" in e
            for e in exprs
        ), quantile


# ---- Prometheus -------------------------------------------------------------------------


def test_prometheus_config_parses_and_uses_ray_service_discovery() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    files = [f for sd in job["file_sd_configs"] for f in sd["files"]]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]


EXPECTED_ALERTS = {
    "ASRHighErrorRate",
    "ASRLatencyP99High",
    "ASRQueueSaturation",
    "ASRReplicasUnhealthy",
    "ASRNoReadyModelReplica",
    "ASRJobsWaiting",
}


def test_alerts_are_the_expected_ones_and_complete() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_queries_name_only_existing_metrics(rule: dict) -> None:
    names = metric_names(rule["expr"])
    assert names, rule["alert"]
    assert names <= known_names(), f"{rule['alert']}: unknown {sorted(names - known_names())}"


def test_queue_alert_threshold_follows_prod_max_queued_requests() -> None:
    prod = yaml.safe_load(PROD.read_text())
    (model,) = [d for d in prod["applications"][0]["deployments"] if d["name"] == "ASRModel"]
    (rule,) = [r for r in alert_rules() if r["alert"] == "ASRQueueSaturation"]
    assert f"0.8 * {model['max_queued_requests']}" in rule["expr"]


# ---- KubeRay ----------------------------------------------------------------------------


def test_rayservice_embeds_exactly_prod_config() -> None:
    service = yaml.safe_load(RAYSERVICE.read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    embedded = service["spec"]["serveConfigV2"]
    assert isinstance(embedded, str)
    assert yaml.safe_load(embedded) == yaml.safe_load(PROD.read_text())


def test_rayservice_cluster_shape() -> None:
    cluster = yaml.safe_load(RAYSERVICE.read_text())["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and head["metrics-export-port"] == "8080"
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus") == "1")
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_render_check_reports_no_drift() -> None:
    result = subprocess.run(
        [sys.executable, str(RENDER), "--check"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- KubeRay manifests against the real schemas ------------------------------------------

KUBERAY = ROOT / "deploy" / "kuberay"
sys.path.insert(0, str(KUBERAY))
import render as kuberay_render  # noqa: E402 - deploy/kuberay is scripts, not a package
import validate as kuberay_validate  # noqa: E402


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def manifest(name: str, kind: str | None = None, named: str | None = None) -> dict:
    """The one document of `name` of that kind and metadata.name (the first one if unsaid)."""
    (found, *_) = [d for d in documents(name)
                   if kind in (None, d["kind"]) and named in (None, d["metadata"]["name"])]
    return found


@pytest.mark.parametrize("name", kuberay_validate.MANIFESTS)
def test_every_manifest_is_valid_against_kuberay_and_kubernetes_schemas(name: str) -> None:
    found = documents(name)
    assert found
    for document in found:
        assert kuberay_validate.problems(document) == [], name


def test_every_rendered_manifest_is_validated_and_applied() -> None:
    rendered = {path.name for path in kuberay_render.render_all()}
    assert rendered == set(kuberay_validate.MANIFESTS)
    assert "redis.yaml" in rendered  # so test_render_check_reports_no_drift covers it


def test_the_validator_finds_what_the_api_server_would_refuse_or_prune() -> None:
    service = manifest("rayservice.yaml")
    cluster = service["spec"]["rayClusterConfig"]
    cluster["workerGroupSpec"] = []  # a typo of workerGroupSpecs: pruned, silently
    cluster["workerGroupSpecs"][0]["replicas"] = "one"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["ports"].append({"containerPort": 8000, "name": "serve-again"})  # same port and TCP
    found = "\n".join(kuberay_validate.problems(service))
    assert "spec.rayClusterConfig.workerGroupSpec: unknown field" in found
    assert "'one' is not of type 'integer'" in found
    assert "duplicate" in found and "containers[0].ports" in found

    policy = manifest("networkpolicy.yaml")
    policy["spec"]["ingress"][0]["ports"][0]["portt"] = 1
    assert kuberay_validate.problems(policy)
    claim = manifest("pvc.yaml")
    claim["spec"]["storageClass"] = "nfs"  # storageClassName is the field
    assert kuberay_validate.problems(claim)
    redis = manifest("redis.yaml", "StatefulSet")
    redis["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["execc"] = {}
    assert kuberay_validate.problems(redis)
    redis = manifest("redis.yaml", "StatefulSet")
    redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = [1]
    assert kuberay_validate.problems(redis)
    service = manifest("redis.yaml", "Service")
    service["spec"]["ports"][0]["port"] = "redis"  # targetPort may name a port; port may not
    assert kuberay_validate.problems(service)


def test_the_crd_is_the_pinned_kuberay_release() -> None:
    import hashlib

    notice = (KUBERAY / "schemas" / "NOTICE").read_text()
    digest = hashlib.sha256(kuberay_validate.CRD.read_bytes()).hexdigest()
    assert f"sha256: {digest}" in notice and "v1.5.1" in notice
    assert "Apache License" in (KUBERAY / "schemas" / "LICENSE-kuberay").read_text()


def test_manifests_agree_on_ports_labels_and_the_cache_claim() -> None:
    ports = kuberay_render.PORTS
    cluster = manifest("rayservice.yaml")["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    names = {"gcs-server": "gcs"}
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            for port in container.get("ports", []):
                assert port["containerPort"] == ports[names.get(port["name"], port["name"])]
    assert ports["serve"] == yaml.safe_load(PROD.read_text())["http_options"]["port"]

    # The NetworkPolicy selects every pod of the cluster, and opens only the Serve port to all.
    policy = manifest("networkpolicy.yaml", named="asr-ray-cluster")["spec"]
    selected = policy["podSelector"]["matchLabels"]
    for group in groups:
        assert selected.items() <= group["template"]["metadata"]["labels"].items()
    open_to_all = [rule for rule in policy["ingress"] if "from" not in rule]
    assert [p["port"] for rule in open_to_all for p in rule["ports"]] == [ports["serve"]]
    private = {p["port"] for rule in policy["ingress"] if "from" in rule
               for p in rule.get("ports", [])}
    assert {ports["dashboard"], ports["metrics"], ports["haproxy-metrics"],
            ports["haproxy-stats"]} <= private

    # The claim the GPU pods mount is the one shipped.
    claim = manifest("pvc.yaml")["metadata"]["name"]
    volumes = [v for g in groups for v in g["template"]["spec"].get("volumes", [])]
    assert {v["persistentVolumeClaim"]["claimName"] for v in volumes} == {claim}

    # deploy/cluster.sh runs the same ports on a plain Ray cluster.
    script = (ROOT / "deploy" / "cluster.sh").read_text()
    assert f'GCS_PORT="${{GCS_PORT:-{ports["gcs"]}}}"' in script
    assert f'DASHBOARD_PORT="${{DASHBOARD_PORT:-{ports["dashboard"]}}}"' in script
    assert f'METRICS_PORT="${{METRICS_PORT:-{ports["metrics"]}}}"' in script
    assert f'{ports["haproxy-stats"]}, {ports["haproxy-metrics"]}  HAProxy' in script


def test_the_image_has_what_kuberays_injected_probes_run() -> None:
    """KubeRay (1.5.x) injects exec probes `bash -c "wget ... | grep success"` into every
    container that defines none; the CUDA runtime base ships bash and grep, not wget."""
    cluster = manifest("rayservice.yaml")["spec"]["rayClusterConfig"]
    containers = [c for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
                  for c in g["template"]["spec"]["containers"]]
    assert not any("readinessProbe" in c or "livenessProbe" in c for c in containers)
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = dockerfile[dockerfile.index("AS runtime"):]
    installs = re.search(r"apt-get install -y --no-install-recommends ([^\\\n&]+)", runtime)
    assert installs and "wget" in installs.group(1).split()


# ---- Redis: jobs and the shared result cache ----------------------------------------------


def prod_args():
    from serve_app.config import AppArgs

    return AppArgs.model_validate(yaml.safe_load(PROD.read_text())["applications"][0]["args"])


def redis_container() -> dict:
    (container,) = manifest("redis.yaml", "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return container


def redis_options() -> dict[str, str]:
    """redis-server's `--name value` arguments as a dict."""
    container = redis_container()
    args = [*container.get("command", []), *container.get("args", [])]
    args = [a for a in args if a not in ("redis-server", "docker-entrypoint.sh")]
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    return {name[2:]: value for name, value in zip(args[::2], args[1::2])}


def gib(value: str) -> float:
    """Redis's memory units (`4gb` is GiB, `4g` 10^9 bytes) and Kubernetes' (`6Gi`), in GiB."""
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", value).groups()
    scale = {"gb": 1, "Gi": 1, "mb": 1 / 1024, "Mi": 1 / 1024, "g": 1e9 / 1024**3,
             "G": 1e9 / 1024**3, "": 1 / 1024**3}[unit]
    return int(number) * scale


def test_redis_never_evicts_jobs_and_keeps_them_on_disk() -> None:
    options = redis_options()
    # Only keys with a TTL (the cache's) may be evicted; the job store sets none.
    assert options["maxmemory-policy"].startswith("volatile-")
    assert "Nothing here carries a TTL" in (ROOT / "serve_app/jobs/redis_store.py").read_text()
    assert options["appendonly"] == "yes" and options["appendfsync"] in ("everysec", "always")
    # Queued audio is never evicted: maxmemory holds the queue's bound with room to spare,
    # and the container's limit holds maxmemory with room for an AOF rewrite's fork.
    maxmemory = gib(options["maxmemory"])
    assert maxmemory * 1024**3 >= 2 * prod_args().jobs.max_queued_bytes
    resources = redis_container()["resources"]
    assert gib(resources["limits"]["memory"]) >= 1.25 * maxmemory
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    # The AOF lives on the claim each Redis pod gets, not in the container.
    spec = manifest("redis.yaml", "StatefulSet")["spec"]
    assert spec["replicas"] == 1
    (claim,) = spec["volumeClaimTemplates"]
    (mount,) = redis_container()["volumeMounts"]
    assert mount == {"name": claim["metadata"]["name"], "mountPath": "/data"}
    assert gib(claim["spec"]["resources"]["requests"]["storage"]) >= 3 * maxmemory


def test_redis_is_pinned_probed_and_runs_unprivileged() -> None:
    container = redis_container()
    assert re.fullmatch(r"redis:7\.4\.\d+", container["image"])
    assert int(container["image"].rsplit(".", 1)[1]) >= 6  # Lua RCE fixes; jobs run Lua
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "redis-cli ping" in " ".join(container[probe]["exec"]["command"]), probe
    pod = manifest("redis.yaml", "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["requests"]) >= {"cpu", "memory"}
    assert set(container["resources"]["limits"]) >= {"cpu", "memory"}


def test_redis_password_comes_only_from_a_secret() -> None:
    container = redis_container()
    env = {e["name"]: e for e in container["env"]}
    assert all("value" not in e for e in env.values()), "no literal env values"
    match = re.fullmatch(r"\$\((\w+)\)", redis_options()["requirepass"])
    assert match, "requirepass must be substituted from the environment"
    assert env[match.group(1)]["valueFrom"]["secretKeyRef"] == {
        "name": kuberay_render.REDIS_NAME, "key": "password"}
    # The probes' redis-cli authenticates from the same Secret.
    assert env["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == {
        "name": kuberay_render.REDIS_NAME, "key": "password"}
    # No manifest nor the Serve config carries a password or a URL with one.
    for path in [*KUBERAY.glob("*.yaml"), PROD]:
        text = path.read_text()
        assert "redis://" not in text and "rediss://" not in text, path.name


def ingress_capable_groups() -> list[dict]:
    """The Ray pod groups that can hold an ingress replica: all but those started with
    num-cpus 0 (ASRIngress asks for CPUs)."""
    cluster = manifest("rayservice.yaml")["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g for g in groups if g["rayStartParams"].get("num-cpus") != "0"]


def test_ray_containers_get_the_redis_url_and_callback_secret_from_secrets() -> None:
    args = prod_args()
    groups = ingress_capable_groups()
    assert {g.get("groupName") for g in groups} == {"cpu", "gpu"}
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            url = env[args.store.redis_url_env]
            assert "value" not in url
            # Not optional: without it a pod would silently keep jobs in its own SQLite file.
            assert url["valueFrom"]["secretKeyRef"] == {
                "name": kuberay_render.REDIS_NAME, "key": "url"}, group.get("groupName")
            secret = env[args.jobs.callback_secret_env]
            assert "value" not in secret
            assert secret["valueFrom"]["secretKeyRef"] == {
                "name": kuberay_render.CALLBACK_SECRET, "key": "secret", "optional": True}


def test_redis_service_and_policy_admit_only_the_service_pods_on_6379() -> None:
    port = kuberay_render.REDIS_PORT
    assert port == 6379
    pod_labels = manifest("redis.yaml", "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    ray_labels = manifest("rayservice.yaml")["spec"]["rayClusterConfig"]["headGroupSpec"][
        "template"]["metadata"]["labels"]
    assert not ray_labels.items() <= pod_labels.items(), "Redis pods are not Ray pods"

    service = manifest("redis.yaml", "Service")
    assert service["metadata"]["name"] == kuberay_render.REDIS_NAME
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    (container_port,) = redis_container()["ports"]
    assert service_port["port"] == container_port["containerPort"] == port
    assert service_port["targetPort"] in (port, container_port["name"])

    policies = [d for d in documents("networkpolicy.yaml")
                if d["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()]
    (policy,) = policies  # exactly one policy selects Redis: no other rule adds to it
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    # A podSelector alone: pods of this namespace only, and only the Ray cluster's.
    assert set(peer) == {"podSelector"}
    assert peer["podSelector"] == {"matchLabels": ray_labels}
    assert rule["ports"] == [{"port": port, "protocol": "TCP"}]


def test_render_refuses_a_redis_too_small_for_the_job_queue(monkeypatch) -> None:
    monkeypatch.setattr(kuberay_render, "REDIS_MAXMEMORY_GIB", 1)
    with pytest.raises(SystemExit, match="max_queued_bytes"):
        kuberay_render.render_redis()
