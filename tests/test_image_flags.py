"""image_flags.py: docker and ome check flags against the SGLang their image runs (tag, label, or the image)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_sglang_tune.flags import NEWEST_VERSION
from pytest_sglang_tune.image_flags import (
    flag_table_for_image,
    nearest_table,
    suite_image,
    version_from_labels,
    version_from_tag,
)
from pytest_sglang_tune.space import expand
from pytest_sglang_tune.suite import load_suite

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[1]
OLD = "0.5.5.post3"


@pytest.mark.parametrize(("image", "version"), [
    ("lmsysorg/sglang:v0.5.5.post3-cu129-amd64", "0.5.5.post3"),
    ("docker.io/lmsysorg/sglang:v0.5.23-cu129", "0.5.23"),
    ("lmsysorg/sglang:v0.4.6.post5-cu124", "0.4.6.post5"),
    ("lmsysorg/sglang:v0.5.0rc2-cu126", "0.5.0rc2"),
    ("127.0.0.1:5000/sglang:0.5.23", "0.5.23"),
    ("lmsysorg/sglang:latest", None),
    ("lmsysorg/sglang:dev", None),
    ("lmsysorg/sglang:nightly-dev-20250101-1a2b3c", None),
    ("lmsysorg/sglang:blackwell", None),
    ("lmsysorg/sglang", None),
    ("127.0.0.1:5000/sglang", None),                    # a registry port is not a tag
    ("lmsysorg/sglang@sha256:" + "a" * 64, None),
])
def test_version_from_tag(image: str, version: str | None) -> None:
    assert version_from_tag(image) == version


def test_version_from_labels() -> None:
    assert version_from_labels({"Config": {"Labels": {"org.sglang-tune.sglang-version": "v0.5.23"}}}) == "0.5.23"
    # a base image's OCI version label (nvidia/cuda: "22.04") is not SGLang's
    assert version_from_labels({"Config": {"Labels": {"org.opencontainers.image.version": "22.04"}}}) is None
    assert version_from_labels(None) is None


@pytest.mark.parametrize(("version", "table", "warns"), [
    (OLD, OLD, False), ("0.5.23", "0.5.23", False), ("v0.5.23", "0.5.23", False),
    ("0.5.10", OLD, True), ("0.5.5.post4", OLD, True), ("0.6.0", "0.5.23", True), ("0.4.6", OLD, True),
])
def test_nearest_lower_table(version: str, table: str, warns: bool) -> None:
    chosen, note = nearest_table(version)
    assert chosen == table and bool(note) == warns


def test_a_version_without_table_uses_the_nearest_lower_one_with_a_warning() -> None:
    got = flag_table_for_image("lmsysorg/sglang:v0.5.10-cu129", None)
    assert (got.table.version, got.version, got.how) == (OLD, "0.5.10", "image lmsysorg/sglang:v0.5.10-cu129: its tag")
    assert got.warnings == ("no shipped flag table for SGLang 0.5.10: flags are checked against 0.5.5.post3, the "
                            "nearest lower version (a flag added since then is reported unknown; shipped: "
                            "0.5.5.post3, 0.5.23)",)


def test_the_tag_decides_without_a_suite_version() -> None:
    got = flag_table_for_image("lmsysorg/sglang:v0.5.5.post3-cu129-amd64", None)
    assert got.table.version == OLD and got.warnings == ()


def test_the_suite_version_wins_and_a_disagreement_is_a_warning() -> None:
    got = flag_table_for_image("lmsysorg/sglang:v0.5.5.post3-cu129-amd64", "0.5.23")
    assert got.table.version == "0.5.23" and got.how == "the suite's sglang_version"
    assert got.warnings == ("the suite says sglang_version 0.5.23 but image lmsysorg/sglang:v0.5.5.post3-cu129-amd64 "
                            "runs SGLang 0.5.5.post3 (from its tag): flags are checked against 0.5.23; fix "
                            "sglang_version or the image",)
    assert flag_table_for_image("x/sglang:v0.5.23", "v0.5.23").warnings == ()


def test_label_then_probe_only_when_the_tag_says_nothing() -> None:
    asked: list[str] = []

    def probe(image: str) -> str | None:
        asked.append(image)
        return "0.5.23"

    labelled = {"Config": {"Labels": {"org.sglang-tune.sglang-version": OLD}}}
    assert flag_table_for_image("x/sglang:latest", None, image_attrs=labelled, probe=probe).table.version == OLD
    assert asked == []
    got = flag_table_for_image("x/sglang:latest", None, probe=probe)
    assert (got.table.version, got.how, asked) == ("0.5.23", "image x/sglang:latest: sglang.__version__ in the image",
                                                   ["x/sglang:latest"])
    flag_table_for_image("x/sglang:v0.5.23", None, probe=probe)
    assert len(asked) == 1


def test_nothing_known_uses_the_newest_table_and_says_so() -> None:
    got = flag_table_for_image("x/sglang:latest", None, probe=lambda image: None)
    assert got.table.version == NEWEST_VERSION and got.version is None
    assert got.warnings[0].startswith("cannot tell which SGLang image x/sglang:latest runs")
    assert flag_table_for_image(None, None).warnings == ()   # no image: nothing to disagree with


def test_ome_image_comes_from_the_runtime_manifest_the_suite_creates() -> None:
    runtime = {"engineConfig": {"runner": {"name": "ome-container",
                                           "image": "docker.io/lmsysorg/sglang:v0.5.5.post3-cu129-amd64"}}}
    assert suite_image("ome", {"runtime": "r", "create_runtime": runtime}) == \
        "docker.io/lmsysorg/sglang:v0.5.5.post3-cu129-amd64"
    assert suite_image("ome", {"runtime": "r"}) is None        # in the cluster: known only at deploy time
    assert suite_image("docker", {"image": "a:v1"}, "b:v2") == "b:v2"


@pytest.mark.parametrize("path", sorted((REPO / "suites").glob("tune_*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_are_consistent_with_their_images(path: Path) -> None:
    suite = load_suite(path)
    image = suite.backend_settings("docker")["image"]
    assert suite.sglang_version == version_from_tag(image), "the suite's sglang_version is not its image's"
    got = flag_table_for_image(image, suite.sglang_version)
    assert got.warnings == () and got.table.version == suite.sglang_version
    assert expand(suite, got.table).configs


def _suite(image: str, flag: str) -> str:
    return f"""\
model: {{path: Qwen/Qwen3-8B, served_name: q}}
backends:
  docker: {{image: "{image}"}}
server:
  grid: {{{flag}: [true]}}
workloads:
  - {{name: chat, scenario: "D(32,8)", num_requests: 2, concurrency: 1}}
"""


def test_docker_collection_checks_flags_against_the_image(pytester: pytest.Pytester) -> None:
    # --disable-flashinfer-autotune is a flag of 0.5.23, not of the 0.5.5.post3 in this image
    pytester.makefile(".yaml", tune_old=_suite("lmsysorg/sglang:v0.5.5.post3-cu129-amd64",
                                               "disable-flashinfer-autotune"))
    result = pytester.runpytest("--backend=docker", "--collect-only", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*unknown SGLang flag '--disable-flashinfer-autotune' for SGLang 0.5.5.post3*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result = pytester.runpytest("--backend=sim", "--collect-only", "-p", "no:cacheprovider")  # the sim: newest
    result.assert_outcomes()
    assert result.ret == pytest.ExitCode.OK


def test_docker_collection_warns_about_a_version_without_table(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_new=_suite("lmsysorg/sglang:v0.5.10-cu129", "enable-metrics"))
    result = pytester.runpytest("--backend=docker", "--collect-only", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*ImageVersionWarning: *tune_new.yaml: no shipped flag table for SGLang 0.5.10: "
                                 "flags are checked against 0.5.5.post3*"])
    assert result.ret == pytest.ExitCode.OK
