"""Which SGLang will run in a docker or ome deployment, so its flags are checked against the right table.

In order: the suite's ``sglang_version``; else the version the image tag names
(``lmsysorg/sglang:v0.5.5.post3-cu129-amd64`` → ``0.5.5.post3``); else, when the tag names none (``latest``, a
digest) and the image is already pulled, its ``org.sglang-tune.sglang-version`` label or what
``python3 -c "import sglang; print(sglang.__version__)"`` prints in it (nothing is pulled at collection time);
else the newest shipped table. A version without a shipped table uses the nearest lower one, with a warning;
a suite whose ``sglang_version`` disagrees with its image gets a warning too (the suite wins: it may pin a table
on purpose).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_sglang_tune.errors import TuneWarning
from pytest_sglang_tune.flags import KNOWN_VERSIONS, FlagTable, load_flag_table, version_key

VERSION_LABEL = "org.sglang-tune.sglang-version"
ROLE_LABEL = "org.sglang-tune.role"   # "version-probe" on the short-lived container that asks an image
PROBE_CACHE = Path(tempfile.gettempdir()) / "sglang-tune-image-versions.json"  # image id → version (or null)
_TAG_VERSION = re.compile(r"^v?(?P<v>\d+(?:\.\d+)+(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?)$")
_PROBE = ("import importlib.metadata as m\ntry:\n    print(m.version('sglang'))\nexcept Exception:\n"
          "    import sglang\n    print(sglang.__version__)\n")
_CACHE: dict[tuple[str | None, str | None], ImageFlags] = {}


class ImageVersionWarning(TuneWarning):
    """The SGLang version of a deployment is unknown, lacks a shipped flag table, or disagrees with the suite."""


@dataclass(frozen=True)
class ImageFlags:
    """The flag table to validate against, the SGLang version it stands for, how that was found, and warnings."""

    table: FlagTable
    version: str | None
    how: str
    warnings: tuple[str, ...] = ()


def version_from_tag(image: str) -> str | None:
    """The SGLang version an image tag names: ``…:v0.5.5.post3-cu129-amd64`` → ``0.5.5.post3``; None for
    ``latest``, ``dev``, a digest, or no tag."""
    last = image.rsplit("/", 1)[-1]
    if "@" in last or ":" not in last:
        return None
    tag = last.rsplit(":", 1)[1]
    m = _TAG_VERSION.match(re.split(r"[-_]", tag, maxsplit=1)[0])
    return m["v"] if m else None


def version_from_labels(attrs: Mapping[str, Any] | None) -> str | None:
    """``org.sglang-tune.sglang-version`` of ``docker image inspect`` output, when it is a version."""
    labels = ((attrs or {}).get("Config") or {}).get("Labels") or {}
    m = _TAG_VERSION.match(str(labels.get(VERSION_LABEL, "")).strip())
    return m["v"] if m else None


def nearest_table(version: str) -> tuple[str, str | None]:
    """The shipped table for ``version``: itself, else the nearest lower one (with a warning), else the oldest."""
    v = version.strip().removeprefix("v")
    if v in KNOWN_VERSIONS:
        return v, None
    lower = [k for k in KNOWN_VERSIONS if version_key(k) <= version_key(v)]
    if lower:
        return lower[-1], (f"no shipped flag table for SGLang {v}: flags are checked against {lower[-1]}, the nearest "
                           f"lower version (a flag added since then is reported unknown; shipped: "
                           f"{', '.join(KNOWN_VERSIONS)})")
    return KNOWN_VERSIONS[0], (f"SGLang {v} is older than every shipped flag table: flags are checked against "
                               f"{KNOWN_VERSIONS[0]} (shipped: {', '.join(KNOWN_VERSIONS)})")


def flag_table_for_image(image: str | None, suite_version: str | None, *,
                         image_attrs: Mapping[str, Any] | None = None,
                         probe: Callable[[str], str | None] | None = None) -> ImageFlags:
    """The flags of the SGLang in ``image`` (see the module docstring for the order of evidence).

    ``image_attrs``: ``docker image inspect`` of the image when it is here (for its label); ``probe``: asks the
    image itself (``probe_image_version``); both are used only when the tag names no version."""
    found, how = None, ""
    if image:
        found, how = version_from_tag(image), "its tag"
        if found is None:
            found, how = version_from_labels(image_attrs), f"its {VERSION_LABEL} label"
        if found is None and probe is not None:
            found, how = probe(image), "sglang.__version__ in the image"
    notes: list[str] = []
    if suite_version and found and version_key(suite_version) != version_key(found):
        notes.append(f"the suite says sglang_version {suite_version} but image {image} runs SGLang {found} (from "
                     f"{how}): flags are checked against {suite_version}; fix sglang_version or the image")
    wanted = suite_version or found
    if wanted is None:
        table = load_flag_table(None)
        if image:
            why = ("it is not pulled yet" if image_attrs is None else
                   f"neither a {VERSION_LABEL} label nor the image itself tells")
            notes.append(f"cannot tell which SGLang image {image} runs (its tag names no version and {why}): "
                         f"flags are checked against the newest table, {table.version}; set sglang_version in "
                         "the suite")
        return ImageFlags(table, None, "newest shipped table", tuple(notes))
    chosen, note = nearest_table(wanted)
    if note:
        notes.append(note)
    return ImageFlags(load_flag_table(chosen), wanted.removeprefix("v"),
                      "the suite's sglang_version" if suite_version else f"image {image}: {how}", tuple(notes))


def _docker() -> Any:
    """The Docker SDK, or None when it is not installed (then no image is asked)."""
    try:
        import docker
    except ImportError:
        return None
    return docker


def _cached(image_id: str) -> tuple[bool, str | None]:
    try:
        data = json.loads(PROBE_CACHE.read_text())
    except (OSError, ValueError):
        return False, None
    return (image_id in data, data.get(image_id)) if isinstance(data, dict) else (False, None)


def _remember(image_id: str, version: str | None) -> None:
    try:
        data = json.loads(PROBE_CACHE.read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    data[image_id] = version
    tmp = PROBE_CACHE.with_name(f"{PROBE_CACHE.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, PROBE_CACHE)
    except OSError:
        pass


def probe_image_version(image: str, *, timeout: float = 60.0) -> str | None:
    """``sglang``'s version inside a pulled ``image`` (its package metadata, else ``sglang.__version__``), from a
    labelled (``org.sglang-tune.role=version-probe``), network-less container that is removed again; None when
    the image is not here or cannot tell. Answers are kept per image id (``PROBE_CACHE``): an image is asked once."""
    docker = _docker()
    if docker is None:
        return None
    from pytest_sglang_tune.backends import docker_ops as ops

    try:
        client = docker.from_env(timeout=10)
    except Exception:  # no engine
        return None
    owner = ops.owner_of_this_process()
    container = None
    try:
        image_id = str(client.images.get(image).id)  # only a pulled image: nothing is pulled at collection time
        known, version = _cached(image_id)
        if known:
            return version
        container = client.containers.create(
            image, entrypoint=["python3", "-c", _PROBE], command=[], network_mode="none",
            labels={ops.LABEL: "1", ops.L_OWNER: owner, ops.L_HOST: owner.split(":")[0], ROLE_LABEL: "version-probe"})
        container.start()
        status = container.wait(timeout=timeout)
        out = container.logs(stdout=True, stderr=False).decode("utf-8", "replace").strip().splitlines()
        m = _TAG_VERSION.match(out[-1].strip()) if out and status.get("StatusCode") == 0 else None
        _remember(image_id, m["v"] if m else None)
        return m["v"] if m else None
    except Exception:  # not pulled, no python3 in it, a timeout: the image cannot tell
        return None
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except Exception:
                pass
        client.close()


def image_attrs(image: str) -> dict[str, Any] | None:
    """``docker image inspect`` of ``image`` when it is here (no pull); None otherwise."""
    docker = _docker()
    if docker is None:
        return None
    try:
        client = docker.from_env(timeout=5)
        try:
            return dict(client.images.get(image).attrs)
        finally:
            client.close()
    except Exception:
        return None


def suite_image(backend: str, settings: Mapping[str, Any], image_option: str | None = None) -> str | None:
    """The image a docker or ome deployment of the suite runs, when it can be known before deploying: docker's
    ``--sglang-image`` or ``backends.docker.image``; ome's ``create_runtime`` manifest's engine image (a runtime
    that already exists in the cluster is read only at deploy time)."""
    if backend == "docker":
        return image_option or (str(settings["image"]) if settings.get("image") else None)
    if backend == "ome" and settings.get("create_runtime"):
        from pytest_sglang_tune.backends.ome_objects import load_manifest

        try:
            spec = load_manifest(settings["create_runtime"], "backends.ome.create_runtime").get("spec") or {}
        except Exception:  # the deploy reports a bad manifest with its field
            return None
        runner = ((spec.get("engineConfig") or {}).get("runner") or {})
        containers = spec.get("containers") or [{}]
        image = runner.get("image") or containers[0].get("image")
        return str(image) if image else None
    return None


def flag_table_for_suite(suite: Any, backend: str, *, image_option: str | None = None) -> FlagTable:
    """For ``items.flag_table_for``: the table for a docker/ome suite, its warnings issued (once per image and
    version) as ``ImageVersionWarning``."""
    image = suite_image(backend, suite.backend_settings(backend), image_option)
    key = (image, suite.sglang_version)
    if key not in _CACHE:
        needs_probe = bool(image) and version_from_tag(str(image)) is None and not suite.sglang_version
        attrs = image_attrs(str(image)) if needs_probe else None
        _CACHE[key] = flag_table_for_image(image, suite.sglang_version, image_attrs=attrs,
                                           probe=probe_image_version if needs_probe and backend == "docker" else None)
        for note in _CACHE[key].warnings:
            warnings.warn(ImageVersionWarning(f"{suite.path}: {note}"), stacklevel=2)
    return _CACHE[key].table
