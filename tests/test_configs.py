"""Every config validates against Serve's own schema and the project's args model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppArgs, BatchingConfig

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def deployments(config: ServeDeploySchema) -> dict:
    return {d.name: d for d in config.applications[0].deployments}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path: Path) -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = config.applications
    assert app.import_path == "serve_app.app:build_app"
    AppArgs.model_validate(app.args)
    model = deployments(config)["ASRModel"]
    batching = BatchingConfig.model_validate(model.user_config)
    # Batches can only fill when the replica accepts at least a batch of requests.
    assert model.max_ongoing_requests >= batching.max_batch_size
    # An open live session is an ongoing request of the ingress: HTTP requests keep room
    # beside the most sessions, and a drain outlasts the longest session.
    args = AppArgs.model_validate(app.args)
    ingress = deployments(config)["ASRIngress"]
    assert ingress.max_ongoing_requests >= 2 * args.realtime.max_sessions
    assert ingress.graceful_shutdown_timeout_s >= args.realtime.graceful_shutdown_s


@pytest.mark.parametrize(
    "name", ["local.yaml", "local-scale-to-zero.yaml", "local-audio-autoscaling.yaml"]
)
def test_local_configs_run_on_cpu_and_autoscale(name: str) -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load((CONFIGS[0].parent / name).read_text()))
    for deployment in deployments(config).values():
        assert not deployment.ray_actor_options.num_gpus
    assert AppArgs.model_validate(config.applications[0].args).model.device == "cpu"
    autoscaling = deployments(config)["ASRModel"].autoscaling_config
    assert autoscaling["max_replicas"] == 2  # two replicas share the two cores at most
    assert autoscaling["min_replicas"] == (0 if "zero" in name else 1)


def test_prod_config_asks_for_a_gpu_fp16_and_autoscaling() -> None:
    path = next(p for p in CONFIGS if p.name == "prod.yaml")
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    model = deployments(config)["ASRModel"]
    assert model.ray_actor_options.num_gpus == 1
    assert model.autoscaling_config["max_replicas"] > model.autoscaling_config["min_replicas"]
    assert model.max_queued_requests > 0
    args = AppArgs.model_validate(config.applications[0].args)
    assert args.model.id == "zai-org/GLM-ASR-Nano-2512" and args.model.dtype == "float16"
    assert config.http_options.host == "0.0.0.0"


def test_args_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"model": {"id": "x", "batch_size": 4}})
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"model": {"id": "x", "encoder_window": "short"}})
    with pytest.raises(ValidationError):
        BatchingConfig.model_validate({"max_batch_size": 0})


def test_the_audio_config_sets_an_application_policy_serve_can_use() -> None:
    """Serve refuses an application-level policy unless every deployment autoscales."""
    from serve_app import autoscaling

    path = CONFIGS[0].parent / "local-audio-autoscaling.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = config.applications
    policy = app.autoscaling_policy
    module, name = policy["policy_function"].split(":")
    assert module == "serve_app.autoscaling"
    getattr(autoscaling, name)(**policy.get("policy_kwargs", {}))
    assert all(d.autoscaling_config for d in app.deployments)
