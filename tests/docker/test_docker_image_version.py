"""image_flags on a real Docker Engine: an image whose tag names no version is asked which SGLang it has."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from dockerkit import ours

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


def test_probe_asks_the_pulled_image(docker_client: Any, versioned_image: str, test_image: str) -> None:
    assert probe_image_version(versioned_image) == "0.5.5.post3"
    got = flag_table_for_image(versioned_image, None, image_attrs=image_attrs(versioned_image),
                               probe=probe_image_version)
    assert (got.table.version, got.how) == ("0.5.5.post3", f"image {versioned_image}: sglang.__version__ in the image")
    assert probe_image_version(test_image) is None          # its stand-in sglang has no version
    assert probe_image_version("127.0.0.1:5000/not-pulled:latest") is None
    assert not ours(docker_client)                           # the probe containers are gone
