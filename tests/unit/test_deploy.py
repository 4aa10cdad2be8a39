"""The `deploy/` examples are manifests Kubernetes accepts, running commands projector accepts.

Each document is validated against the Kubernetes API's own schema (kubernetes-validate, strict:
a misspelt field fails), and each container's `projector` command is parsed by the real CLI,
with its environment variables checked against the settings, so an example cannot drift from
the flags it documents.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from projector.cli import main
from projector.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
# What a shell in the pod would give for the StatefulSet's ``${HOSTNAME##*-}`` (its ordinal).
POD_ORDINAL = "2"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", []))


def _projector_args(container: dict[str, Any]) -> list[str]:
    """The arguments given to `projector`: the container's args, or the shell line's words
    after ``exec projector`` when a shell runs it."""
    args = [str(arg) for arg in container.get("args", [])]
    if container.get("command", [])[:1] != ["/bin/sh"]:
        return args
    words = shlex.split(" ".join(args).replace("${HOSTNAME##*-}", POD_ORDINAL))
    assert words[:2] == ["exec", "projector"], f"{container['name']}: {words[:2]}"
    return words[2:]


def test_there_are_examples_for_both_kinds_of_group() -> None:
    kinds = {doc["kind"] for path in MANIFESTS for doc in _documents(path)}
    assert {"Deployment", "StatefulSet"} <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_manifest_is_valid_for_the_kubernetes_api(path: Path) -> None:
    for doc in _documents(path):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_projector_command_parses_and_every_variable_is_a_setting(path: Path) -> None:
    settings = {f"PROJECTOR_{name.upper()}" for name in Settings.model_fields}
    containers = [c for doc in _documents(path) for c in _containers(doc)]
    assert containers, f"{path.name} runs no container"
    for container in containers:
        name, *rest = _projector_args(container)
        with click.Context(main) as parent:
            command = main.get_command(parent, name)
            assert command is not None, f"{path.name}: projector has no command {name!r}"
            command.make_context(name, rest, parent=parent)  # raises on an unknown flag
        variables = {env["name"] for env in container.get("env", [])}
        assert variables <= settings, f"{path.name}: not settings: {variables - settings}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_served_metrics_port_listens_beyond_the_loopback(path: Path) -> None:
    """The default host is the loopback, where the kubelet's probes would never reach."""
    for doc in _documents(path):
        for container in _containers(doc):
            args = _projector_args(container)
            if any(arg.startswith("--metrics-port") for arg in args):
                assert "--metrics-host=0.0.0.0" in args, f"{path.name}: probes cannot reach it"
