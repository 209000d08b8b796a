"""The Flower app folder for the Deployment Engine: a pyproject.toml naming edgetune's apps.

`flwr run APP_DIR FEDERATION` packs the folder into a Flower App Bundle and starts it on
the SuperLink; every SuperNode imports `edgetune.fed.client_app:app` from its own
edgetune install (with the `fed` extra), so the folder holds no code, only the
components and the run config. Flower's dependency install must be off on the nodes
(FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1): devices are offline. A SecAgg+ fleet
names `edgetune.fed.secagg_client:app`, the ClientApp with Flower's `secaggplus_mod`.
"""

from pathlib import Path

import tomli_w

import edgetune
from edgetune.common.atomic import write_atomic
from edgetune.fed.config import FleetConfig

PYPROJECT = "pyproject.toml"


def app_pyproject(config: FleetConfig) -> dict:
    """The app's pyproject.toml as a dict: project, components and the run config."""
    return {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "edgetune-fleet",
            "version": edgetune.__version__,
            "description": "Federated LoRA with edgetune: ONNX Runtime training on every node",
            "license": "Apache-2.0",
            "dependencies": [],  # edgetune[fed] is installed on every node
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "edgetune",
                    "components": {
                        "serverapp": "edgetune.fed.server_app:app",
                        "clientapp": f"edgetune.fed.{'secagg_client' if config.secagg else 'client_app'}:app",
                    },
                    "config": config.to_run_config(),
                }
            }
        },
    }


def write_app(folder: Path, config: FleetConfig) -> Path:
    """Write `folder/pyproject.toml` for `config`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PYPROJECT
    write_atomic(path, tomli_w.dumps(app_pyproject(config)))
    return path
