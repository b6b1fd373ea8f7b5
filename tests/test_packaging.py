"""What can be checked of the container image without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_every_copied_path_exists() -> None:
    sources = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_image_runs_the_production_config_as_a_non_root_user() -> None:
    assert 'CMD ["serve", "run", "configs/prod.yaml"]' in DOCKERFILE
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert "HEALTHCHECK" in DOCKERFILE and "/healthz" in DOCKERFILE
    assert "EXPOSE 8000" in DOCKERFILE
    assert DOCKERFILE.count("FROM ") >= 2  # multi-stage: build tools stay out of the image


def test_weights_and_local_state_stay_out_of_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"models", ".venv", ".git"} <= set(ignored)


def test_every_way_of_starting_ray_sets_the_ingress_environment() -> None:
    """What proxy_env() gives the tests' Ray (HAProxy in front, the proxy guard and its
    body cap) is what the image, `make serve` and deploy/cluster.sh give a real one."""
    from serve_app.proxy_hooks import proxy_env

    makefile = (ROOT / "Makefile").read_text()
    cluster = (ROOT / "deploy" / "cluster.sh").read_text()
    # The image's ENV instructions (continuation lines included), without comments.
    image_env = " ".join(re.findall(r"^ENV ((?:.*\\\n)*.*)$", DOCKERFILE, re.MULTILINE))
    for name, value in proxy_env().items():
        assert re.search(rf"(^|\s){name}={value}(\s|\\|$)", image_env), name
        assert f"serve: export {name} = {value}" in makefile, name
        assert f'export {name}="${{{name}:-{value}}}"' in cluster, name
