"""Redaction: secrets by key/flag name, in argv lists, URLs, text, and literal values from the environment."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_sglang_tune.redact import ENV_SECRETS, REDACTED, is_secret_name, redact, redact_text


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_SECRETS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("name", "secret"), [
    ("--api-key", True), ("--admin-api-key", True), ("api_key", True), ("api-key", True), ("hf_token", True),
    ("HF_TOKEN", True), ("GITHUB_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("MY_SECRET", True),
    ("password", True), ("ssl_keyfile_password", True), ("--ssl-keyfile-password", True),
    ("Authorization", True), ("client_secret", True),
    ("max_total_tokens", False), ("tokenizer_path", False), ("--tokenizer-path", False),
    ("bucket_time_to_first_token", False), ("speculative_token_map", False), ("ssl_keyfile", False),
    ("skip_tokenizer_init", False), ("tp-size", False), ("model_path", False),
])
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


@pytest.mark.parametrize(("text", "expected"), [
    ("python -m sglang.launch_server --api-key sk-123 --tp-size 2",
     "python -m sglang.launch_server --api-key *** --tp-size 2"),
    ("--admin-api-key=adm1n --port 30000", "--admin-api-key=*** --port 30000"),
    ('--api-key "two words" --x 1', '--api-key "***" --x 1'),
    ("--api-key --hf-token hf_abc", "--api-key --hf-token ***"),
    ("ServerArgs(model_path='m', api_key='k3y', admin_api_key=None)",
     "ServerArgs(model_path='m', api_key='***', admin_api_key=None)"),
    ("docker run -e HF_TOKEN=hf_xyz -e CUDA_VISIBLE_DEVICES=0 img",
     "docker run -e HF_TOKEN=*** -e CUDA_VISIBLE_DEVICES=0 img"),
    ("GET http://127.0.0.1:30000/v1/models?token=tok123&x=1",
     "GET http://127.0.0.1:30000/v1/models?token=***&x=1"),
    ("https://h/x?api_key=abcdef", "https://h/x?api_key=***"),
    ("pulling https://user:hunter2@registry.example/v2/", "pulling https://user:***@registry.example/v2/"),
    ("clone https://ghp_abcdef@github.com/o/r", "clone https://***@github.com/o/r"),
    ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
    ("headers={'authorization': 'Basic dXNlcjpwYXNz'}", "headers={'authorization': '***'}"),
    ('{"hf_token": "hf_abc", "tp": 2}', '{"hf_token": "***", "tp": 2}'),
    ("sent with bearer eyJhbGciOiJIUzI1NiJ9", "sent with bearer ***"),
    # not secrets: left alone
    ("--tokenizer-path /models/t --bucket-time-to-first-token 0.1", "--tokenizer-path /models/t "
     "--bucket-time-to-first-token 0.1"),
    ("http://127.0.0.1:30000/health max_total_tokens=4096",
     "http://127.0.0.1:30000/health max_total_tokens=4096"),
    ("api_key=None", "api_key=None"),
])
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_env_literal_found_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_SuperSecretValue42")
    monkeypatch.setenv("SGLANG_API_KEY", "sgl-key-777")
    tail = "INFO loading with token hf_SuperSecretValue42 ok\nclient key=sgl-key-777."
    assert redact_text(tail) == "INFO loading with token *** ok\nclient key=***."
    rec = {"config_id": "tp1-hf_SuperSecretValue42", "log_tail": tail, "n": 3}
    out = redact(rec)
    assert out == {"config_id": "tp1-***", "log_tail": "INFO loading with token *** ok\nclient key=***.",
                   "n": 3}
    assert "hf_SuperSecretValue42" in rec["config_id"]      # the input is not modified


def test_other_secret_named_env_vars_are_literals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "zz-top-secret-zz")
    assert redact_text("x zz-top-secret-zz y") == "x *** y"


def test_extra_secrets_and_short_literals() -> None:
    assert redact_text("id=abcd-p4ss-wxyz", extra_secrets=["p4ss"]) == "id=abcd-***-wxyz"
    assert redact_text("a b c", extra_secrets=["b"]) == "a b c"     # too short to search for safely


def test_redact_structures() -> None:
    record: dict[str, Any] = {
        "server_args": {"api-key": "k1", "--admin-api-key": "k2", "tp-size": 2,
                        "bucket_time_to_first_token": 0.1, "hf_token": None},
        "argv": ["pytest", "--api-key", "k3", "--hf-token=k4", "--tp-size", "2", "--api-key"],
        "env": {"HF_TOKEN": "k5", "PATH": "/usr/bin"},
        "headers": [("Authorization", "Bearer k6k6k6k6k6")],
        "launch_command": "python -m sglang.launch_server --api-key k7 --tp-size 2",
        "nested": {"deeper": [{"password": "k8"}]},
        "metrics": {"ttft_ms": {"p99": 1.5}},
    }
    out = redact(record)
    assert out == {
        "server_args": {"api-key": REDACTED, "--admin-api-key": REDACTED, "tp-size": 2,
                        "bucket_time_to_first_token": 0.1, "hf_token": None},
        "argv": ["pytest", "--api-key", REDACTED, "--hf-token=***", "--tp-size", "2", "--api-key"],
        "env": {"HF_TOKEN": REDACTED, "PATH": "/usr/bin"},
        "headers": [("Authorization", "Bearer ***")],
        "launch_command": "python -m sglang.launch_server --api-key *** --tp-size 2",
        "nested": {"deeper": [{"password": REDACTED}]},
        "metrics": {"ttft_ms": {"p99": 1.5}},
    }
    assert record["server_args"]["api-key"] == "k1"     # deep copy: the input keeps its values


def test_redaction_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-abcdef")
    once = redact({"cmd": "--api-key sk-openai-abcdef https://u:p@h/?token=t", "argv": ["--api-key", "x"]})
    assert redact(once) == once
    assert "sk-openai" not in repr(once)


def test_already_redacted_config_id_keeps_its_hash() -> None:
    from pytest_sglang_tune.redact import redact_text

    assert redact_text("api-key=***,tp-size=2~1a2b3c") == "api-key=***,tp-size=2~1a2b3c"
    assert redact_text("api-key=***~1a2b3c") == "api-key=***~1a2b3c"
    assert redact_text("api-key=sk-abcdef~1") == "api-key=***"


ENV_FORMS_KEPT = [  # redacted before issue 14 as well
    ("docker run -e MY_SERVICE_API_KEY=v4lue-s3cret img", "docker run -e MY_SERVICE_API_KEY=*** img"),
    ("docker run --env MY_SERVICE_API_KEY=v4lue-s3cret img", "docker run --env MY_SERVICE_API_KEY=*** img"),
    ("docker run -eMY_SERVICE_API_KEY=v4lue-s3cret img", "docker run -eMY_SERVICE_API_KEY=*** img"),
    ("env HF_TOKEN=v4lue-s3cret python -m sglang.launch_server", "env HF_TOKEN=*** python -m sglang.launch_server"),
    # not secrets: left alone
    ("docker run -e=CUDA_VISIBLE_DEVICES=0,1 --env=SGLANG_SIM_GPU=h100 img",
     "docker run -e=CUDA_VISIBLE_DEVICES=0,1 --env=SGLANG_SIM_GPU=h100 img"),
]
ENV_FORMS = [  # NAME=value as the value of an option written with "=" (docker, podman, kubectl, helm)
    ("docker run -e=MY_SERVICE_API_KEY=v4lue-s3cret img", "docker run -e=MY_SERVICE_API_KEY=*** img"),
    ("docker run --env=MY_SERVICE_API_KEY=v4lue-s3cret img", "docker run --env=MY_SERVICE_API_KEY=*** img"),
    ("docker run -e='WANDB_API_KEY=v4lue-s3cret' img", "docker run -e='WANDB_API_KEY=***' img"),
    ('docker run --env="HF_TOKEN=v4lue-s3cret" img', 'docker run --env="HF_TOKEN=***" img'),
    ("kubectl set env deploy/x --env=HF_TOKEN=v4lue-s3cret", "kubectl set env deploy/x --env=HF_TOKEN=***"),
    ("helm install --set-string=env.HF_TOKEN=v4lue-s3cret", "helm install --set-string=env.HF_TOKEN=***"),
]


@pytest.mark.parametrize(("text", "expected"), ENV_FORMS_KEPT)
def test_env_option_forms_that_were_already_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected



@pytest.mark.parametrize(("text", "expected"), ENV_FORMS)
def test_every_env_option_form_is_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_env_forms_in_argv_lists_and_kubernetes_env_vars() -> None:
    argv = ["docker", "run", "-e=MY_SERVICE_API_KEY=v4lue-s3cret", "--env=HF_TOKEN=v4lue-s3cret",
            "-e", "X_SECRET=v4lue-s3cret", "--env", "MY_TOKEN=v4lue-s3cret", "-e=PATH=/usr/bin", "img"]
    assert redact(argv) == ["docker", "run", "-e=MY_SERVICE_API_KEY=***", "--env=HF_TOKEN=***", "-e",
                            "X_SECRET=***", "--env", "MY_TOKEN=***", "-e=PATH=/usr/bin", "img"]
    # a Kubernetes EnvVar (pod specs, InferenceService manifests): the secret is under "value"
    env = [{"name": "HF_TOKEN", "value": "v4lue-s3cret"}, {"name": "TP", "value": "2"},
           {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]
    assert redact({"env": env}) == {"env": [{"name": "HF_TOKEN", "value": REDACTED}, {"name": "TP", "value": "2"},
                                            env[2]]}


@pytest.mark.parametrize(("value", "expected"), [
    # a reference names where the secret comes from when the line runs (exported commands and manifests)
    ('docker run -e HF_TOKEN img s --api-key "$API_KEY"', 'docker run -e HF_TOKEN img s --api-key "$API_KEY"'),
    ("--api-key=${API_KEY} --tp-size 2", "--api-key=${API_KEY} --tp-size 2"),
    (["--api-key", "$(API_KEY)", "--admin-api-key=$(ADMIN_API_KEY)"],
     ["--api-key", "$(API_KEY)", "--admin-api-key=$(ADMIN_API_KEY)"]),
    ({"api_key": "$API_KEY"}, {"api_key": "$API_KEY"}),
    ({"name": "HF_TOKEN", "value": "$(HF_TOKEN)"}, {"name": "HF_TOKEN", "value": "$(HF_TOKEN)"}),
    # anything else that starts with $ is a value: lower case, or more than one name
    ("--api-key $ecret", "--api-key ***"),
    (["--api-key", "$A$B"], ["--api-key", REDACTED]),
    ({"password": "$(rm -rf x)"}, {"password": REDACTED}),
])
def test_variable_references_are_not_secrets(value: Any, expected: Any) -> None:
    assert redact(value) == expected
