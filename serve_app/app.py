"""The application builder: the only place deployments are bound together.

Every config under `configs/` names `import_path: serve_app.app:build_app` and passes
`AppArgs` as `args`; Serve validates them against the type annotation before building.
"""

from __future__ import annotations

from ray.serve import Application

from serve_app.config import AppArgs
from serve_app.ingress import ASRIngress
from serve_app.model import ASRModel


def build_app(args: AppArgs) -> Application:
    args = AppArgs.model_validate(args)
    model = ASRModel.bind(args.model.model_dump())
    return ASRIngress.bind(model, args.model_dump())
