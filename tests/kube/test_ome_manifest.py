"""The InferenceService we generate, validated against OME's real CRD schema with unknown fields refused."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from fakeapi import load_crds
from fakecluster import REFERENCE_CRDS, test_model, test_runtime

from pytest_sglang_tune.backends.base import DeploymentSpec
from pytest_sglang_tune.backends.ome_manifest import build_inference_service, isvc_name, label_value
from pytest_sglang_tune.backends.ome_schema import schema_errors, validate_manifest
from pytest_sglang_tune.errors import DeployError, SuiteError

pytestmark = pytest.mark.kube
DNS1123 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def crds() -> dict[str, Any]:
    if not REFERENCE_CRDS.is_dir():
        pytest.skip(f"OME CRDs not found at {REFERENCE_CRDS}")
    return load_crds(REFERENCE_CRDS)


def spec(**settings: Any) -> DeploymentSpec:
    base = {"runtime": "srt-qwen3-8b", "model": "qwen3-8b"}
    base.update(settings)
    return DeploymentSpec(suite="qwen8b-chat", config_id="tp-size=2,mem-fraction-static=0.85~ab12cd",
                          model_path="Qwen/Qwen3-8B", served_model_name="qwen3-8b",
                          server_args={"--tp-size": 2, "--mem-fraction-static": 0.85},
                          argv=("--tp-size", "2", "--mem-fraction-static", "0.85"), gpus=2, settings=base,
                          run_id="20260101-000000-abcd")


def isvc(s: DeploymentSpec | None = None) -> dict[str, Any]:
    return build_inference_service(s or spec(), name="qwen8b-chat-tp-2-abc123", namespace="tune",
                                   runtime=test_runtime(), owner="host:1")


@pytest.mark.parametrize(("suite", "config_id"), [
    ("qwen8b-chat", "tp-size=2,mem-fraction-static=0.85"),
    ("Qwen3_8B Chat!!", "x" * 300),
    ("9lives", "chunked-prefill-size=8192,schedule-policy=lpm,enable-mixed-chunk=True~0f0f0f"),
    ("-", "-"),
])
def test_names_are_dns1123_short_and_unique_per_run(suite: str, config_id: str) -> None:
    a = isvc_name(suite, config_id, "run-a")
    assert DNS1123.match(a) and len(a) <= 47, a
    assert a == isvc_name(suite, config_id, "run-a")
    assert a != isvc_name(suite, config_id, "run-b")
    assert a != isvc_name(suite, config_id + "x", "run-a")


@pytest.mark.parametrize(("value", "ok"), [("run-1", True), ("a" * 80, False), ("x=y,z", False)])
def test_label_values_are_valid(value: str, ok: bool) -> None:
    out = label_value(value)
    assert len(out) <= 63 and re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", out)
    assert (out == value) is ok


def test_manifest_carries_flags_as_runner_args_and_copies_runtime_resources() -> None:
    body = isvc()
    runner = body["spec"]["engine"]["runner"]
    assert runner["args"] == ["--tp-size", "2", "--mem-fraction-static", "0.85", "--served-model-name", "qwen3-8b"]
    assert "command" not in runner  # the runtime's launch line stays: our args are appended to it
    assert runner["name"] == "ome-container"
    assert runner["resources"] == {"requests": {"cpu": "10", "memory": "30Gi", "nvidia.com/gpu": "2"},
                                   "limits": {"cpu": "10", "memory": "30Gi", "nvidia.com/gpu": "2"}}
    assert body["spec"]["engine"]["minReplicas"] == body["spec"]["engine"]["maxReplicas"] == 1
    # the deployment mode is pinned for the controller (metadata) and for the engine itself (engine annotations)
    assert body["metadata"]["annotations"]["ome.io/deploymentMode"] == "RawDeployment"
    assert body["spec"]["engine"]["annotations"] == {"ome.io/deploymentMode": "RawDeployment"}
    assert "tolerations" not in body["spec"]["engine"]   # none of ours: the pod keeps the runtime's
    assert body["spec"]["runtime"] == {"name": "srt-qwen3-8b", "kind": "ClusterServingRuntime"}
    assert body["spec"]["model"] == {"name": "qwen3-8b", "kind": "ClusterBaseModel"}
    labels = body["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "pytest-sglang-tune"
    assert labels["sglang-tune.io/run"] == "20260101-000000-abcd"
    assert labels["sglang-tune.io/suite"] == "qwen8b-chat"
    assert body["metadata"]["annotations"]["sglang-tune.io/config-id"] == spec().config_id


@pytest.mark.parametrize("settings", [
    {},
    {"env": {"NCCL_DEBUG": "INFO", "HF_HUB_OFFLINE": 1}},
    {"node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
    {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    {"deployment_mode": "Serverless"},
    {"runtime": {"name": "srt-ns", "kind": "ServingRuntime"}, "model": {"name": "m", "kind": "BaseModel"}},
])
def test_every_generated_manifest_passes_the_closed_crd_schema(crds: dict[str, Any],
                                                               settings: dict[str, Any]) -> None:
    body = isvc(spec(**settings))
    assert schema_errors(body, crds["inferenceservices.ome.io"]) == []


def test_a_typo_is_refused_by_the_closed_schema(crds: dict[str, Any]) -> None:
    body = isvc()
    bad = copy.deepcopy(body)
    bad["spec"]["engine"]["runner"]["arg"] = bad["spec"]["engine"]["runner"].pop("args")
    errors = schema_errors(bad, crds["inferenceservices.ome.io"])
    assert any(e.startswith("spec.engine.runner:") and "'arg' was unexpected" in e for e in errors), errors
    with pytest.raises(DeployError, match=r"spec\.engine\.runner: Additional properties.*'arg'"):
        validate_manifest(bad, crds["inferenceservices.ome.io"])


def test_the_test_runtime_and_model_pass_their_crds(crds: dict[str, Any]) -> None:
    assert schema_errors(test_runtime(), crds["clusterservingruntimes.ome.io"]) == []
    assert schema_errors(test_model(), crds["clusterbasemodels.ome.io"]) == []


def test_upstream_samples_pass_the_closed_schema(crds: dict[str, Any]) -> None:
    """The closed schema is not stricter than OME itself: its own samples validate."""
    import yaml

    samples = REFERENCE_CRDS.parent / "ome-samples"
    kinds = {"InferenceService": "inferenceservices.ome.io", "ClusterServingRuntime": "clusterservingruntimes.ome.io",
             "ClusterBaseModel": "clusterbasemodels.ome.io"}
    seen = 0
    for path in sorted(Path(samples).glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") in kinds:
            assert schema_errors(doc, crds[kinds[doc["kind"]]]) == [], path.name
            seen += 1
    assert seen == 3


@pytest.mark.parametrize(("settings", "message"), [
    ({"runtime": None}, "backends.ome.runtime: must name the ClusterServingRuntime"),
    ({"model": {"name": "m", "kind": "Model"}}, "backends.ome.model: kind 'Model' is not one of ClusterBaseModel"),
    ({"env": ["A=1"]}, "backends.ome.env: must be a mapping NAME: value"),
    ({"node_selector": "gpu"}, "backends.ome.node_selector: must be a mapping"),
    ({"tolerations": {"key": "x"}}, "backends.ome.tolerations: must be a list of Kubernetes tolerations"),
    ({"deployment_mode": "MultiNode"}, "backends.ome.deployment_mode: 'MultiNode' is not a deployment mode we can "
                                       "tune with; allowed: RawDeployment, Serverless"),
])
def test_bad_suite_settings_name_the_field(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(SuiteError, match=re.escape(message)):
        isvc(spec(**settings))


def test_suite_tolerations_are_sent_with_the_runtime_ones_not_instead() -> None:
    own = {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    body = isvc(spec(tolerations=[own]))
    assert body["spec"]["engine"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, own]


# --- export: the winner as a manifest to apply -----------------------------------------------------------------

def exported(**settings: Any) -> dict[str, Any]:
    from pytest_sglang_tune.backends.ome_manifest import export_inference_service

    s = spec(**settings)
    return export_inference_service(suite=s.suite, config_id=s.config_id, settings=s.settings,
                                    served_model_name=s.served_model_name, argv=s.argv, gpus=s.gpus,
                                    runtime=test_runtime())


def test_the_exported_manifest_deploys_the_same_spec_without_what_belongs_to_one_run(crds: dict[str, Any]) -> None:
    body = exported(env={"NCCL_DEBUG": "INFO"})
    deployed = isvc(spec(env={"NCCL_DEBUG": "INFO"}))
    assert body["spec"] == deployed["spec"]
    assert "sglang-tune.io/run" not in body["metadata"]["labels"]
    assert "app.kubernetes.io/managed-by" not in body["metadata"]["labels"]
    assert "sglang-tune.io/owner" not in body["metadata"]["annotations"]
    assert body["metadata"]["name"] == exported()["metadata"]["name"]   # stable across runs: re-apply updates it
    assert DNS1123.match(body["metadata"]["name"])
    assert schema_errors(body, crds["inferenceservices.ome.io"]) == []


def test_the_exported_manifest_is_admitted_strictly_by_the_fake_api_server(crds: dict[str, Any]) -> None:
    from fakeschema import admit

    body = {**exported(), "metadata": {**exported()["metadata"], "namespace": "tune"}}
    assert admit(body, crds["inferenceservices.ome.io"], "Strict")[:2] == (0, "")


def test_secrets_in_the_exported_manifest_come_from_a_secret() -> None:
    from pytest_sglang_tune.backends.base import DeploymentSpec
    from pytest_sglang_tune.backends.ome_manifest import EXPORT_SECRET, export_inference_service_yaml

    s = DeploymentSpec(suite="s", config_id="c", model_path="m", served_model_name="m", server_args={},
                       argv=("--api-key", "sk-live-123", "--tp-size", "2"), gpus=2,
                       settings={"runtime": "rt", "model": "m", "env": {"HF_TOKEN": "hf_abc", "A": "1"}})
    text = export_inference_service_yaml(suite=s.suite, config_id=s.config_id, settings=s.settings,
                                         served_model_name=s.served_model_name, argv=s.argv, gpus=s.gpus)
    assert "sk-live-123" not in text and "hf_abc" not in text
    import yaml

    body = yaml.safe_load(text)
    runner = body["spec"]["engine"]["runner"]
    assert runner["args"][:4] == ["--api-key", "$(API_KEY)", "--tp-size", "2"]
    ref = {"secretKeyRef": {"name": EXPORT_SECRET, "key": "HF_TOKEN"}}
    assert {"name": "HF_TOKEN", "valueFrom": ref} in runner["env"] and {"name": "A", "value": "1"} in runner["env"]
    assert {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": EXPORT_SECRET, "key": "API_KEY"}}} in \
        runner["env"]
    assert runner["name"] == "ome-container" and runner["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert text.startswith("# pytest-sglang-tune: the best config of suite 's' as an OME InferenceService")
