"""image_flags on a real Docker Engine: an image whose tag names no version is asked which SGLang it has."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dockerkit import ours

import pytest_sglang_tune.image_flags as image_flags
from pytest_sglang_tune.image_flags import flag_table_for_image, image_attrs, probe_image_version

pytestmark = pytest.mark.docker
PROBE_IMAGE = "sglang-tune-version-probe:latest"


@pytest.fixture
def versioned_image(docker_client: Any, test_image: str) -> Iterator[str]:
    """The test image with ``sglang.__version__ = "0.5.5.post3"`` added, under a tag that names no version."""
    docker_client.images.pull(test_image)
    dockerfile = (f"FROM {test_image}\n"
                  'RUN ["python3", "-c", "open(\'/opt/sglang-tune/sglang/__init__.py\', \'a\')'
                  '.write(\'\\\\n__version__ = \\"0.5.5.post3\\"\\\\n\')"]\n')
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=PROBE_IMAGE, rm=True, forcerm=True)
    yield PROBE_IMAGE
    docker_client.images.remove(PROBE_IMAGE, force=True)


def test_probe_asks_the_pulled_image(docker_client: Any, versioned_image: str, test_image: str,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "versions.json"
    monkeypatch.setattr(image_flags, "PROBE_CACHE", cache)
    assert probe_image_version(versioned_image) == "0.5.5.post3"
    image_id = docker_client.images.get(versioned_image).id
    assert json.loads(cache.read_text()) == {image_id: "0.5.5.post3"}
    cache.write_text(json.dumps({image_id: "9.9.9"}))             # asked once per image id: the answer is kept
    assert probe_image_version(versioned_image) == "9.9.9"
    cache.unlink()
    got = flag_table_for_image(versioned_image, None, image_attrs=image_attrs(versioned_image),
                               probe=probe_image_version)
    assert (got.table.version, got.how) == ("0.5.5.post3", f"image {versioned_image}: sglang.__version__ in the image")
    assert probe_image_version(test_image) is None          # its stand-in sglang has no version
    assert probe_image_version("127.0.0.1:5000/not-pulled:latest") is None
    assert not ours(docker_client)                           # the probe containers are gone
