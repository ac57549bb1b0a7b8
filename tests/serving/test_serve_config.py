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


def test_it_names_the_servicers_the_builder_and_the_app_the_code_uses() -> None:
    document = yaml.safe_load(CONFIG.read_text())
    assert document["grpc_options"]["grpc_servicer_functions"] == app.SERVICERS
    assert app.SERVICERS[0] == app.SERVICER
    (application,) = document["applications"]
    assert application["name"] == ServingConfig().app_name
    module, _, attribute = application["import_path"].partition(":")
    assert (module, attribute) == (app.__name__, app.app_builder.__name__)
    assert set(application["args"]) <= {"config", "workspace"}


def test_access_logs_are_off_as_in_the_serving_defaults() -> None:
    document = yaml.safe_load(CONFIG.read_text())
    assert document["logging_config"]["enable_access_log"] is ServingConfig().access_log is False


def test_logs_are_serves_json_logs_as_the_app_configures_them(tmp_path: pathlib.Path) -> None:
    from serving.settings import load_settings

    document = yaml.safe_load(CONFIG.read_text())
    wanted = app.logging_config(load_settings(None, workspace=str(tmp_path)))
    assert document["logging_config"] == wanted
    assert wanted["encoding"] == "JSON"


def test_every_servicer_imports() -> None:
    import importlib

    for path in app.SERVICERS:
        module, _, name = path.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), path


def test_the_app_sets_its_deployments_access_log_from_the_settings(tmp_path: pathlib.Path) -> None:
    import dataclasses

    from serving.settings import load_settings

    settings = load_settings(None, workspace=str(tmp_path))
    for wanted in (False, True):
        chosen = settings.replace(serving=dataclasses.replace(settings.serving, access_log=wanted))
        ranker = app.build_app(chosen)._bound_deployment
        learner = ranker.init_args[1]._bound_deployment
        assert ranker.logging_config["enable_access_log"] is wanted
        assert learner.logging_config["enable_access_log"] is wanted
