"""The Serve config in infra/ stays in step with the application's code."""

from __future__ import annotations

import pathlib

import yaml
from ray.serve.schema import ServeDeploySchema

from serving import app
from serving.config import ServingConfig

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "infra" / "serve" / "config.yaml"


def test_the_config_is_valid_for_serve() -> None:
    ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))


def test_it_names_the_servicer_the_builder_and_the_app_the_code_uses() -> None:
    document = yaml.safe_load(CONFIG.read_text())
    assert document["grpc_options"]["grpc_servicer_functions"] == [app.SERVICER]
    (application,) = document["applications"]
    assert application["name"] == ServingConfig().app_name
    module, _, attribute = application["import_path"].partition(":")
    assert (module, attribute) == (app.__name__, app.app_builder.__name__)
    assert set(application["args"]) <= {"config", "workspace"}
