"""The winner, exported where it runs: per suite × workload, the best config as what deploys it.

The best config is the report's answer (``html_model.headline``: the best at the highest load level where one
meets the SLOs, else at the highest level measured); when it is tied, the first is exported and the others are
listed in ``tied_with``. Each export holds, ready to paste or apply:

* ``launch_command``: ``python -m sglang.launch_server ...`` (always; with ``backends.local.env`` in front);
* ``docker_run``: the ``docker run`` line (``docker_ops.docker_run_command``) when the run used docker or the
  suite has ``backends.docker`` with an image;
* ``inference_service_yaml``: the OME InferenceService (``ome_manifest.export_inference_service_yaml``) when the
  run used ome or the suite has ``backends.ome``; also written to ``winner-<suite>-<workload>.yaml``.

They are built from the suite as parsed (the same flags as the deploy: ``table.to_argv`` of the config's args,
its GPU count, image, env names), never from the redacted results; a secret never appears: a secret flag's value
becomes ``"$VAR"`` (shell) or ``$(VAR)`` from the Secret ``sglang-tune-secrets`` (manifest), secret-named env
entries are passed through from the shell or taken from that Secret.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_sglang_tune.errors import TuneError
from pytest_sglang_tune.ranking import load_label
from pytest_sglang_tune.report import suite_names
from pytest_sglang_tune.report.html_model import Best, best_per_load, headline, short_label, suite_results, workloads

EXPORT_PORT = 30000
LAUNCHER = ("python", "-m", "sglang.launch_server")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Source:
    """What a suite's winners are exported from, unredacted: the parsed suite (``suite.Suite``, with the run's
    command-line overrides applied) and its expanded space (``space.Expansion``: configs and flag table)."""

    suite: Any
    expansion: Any


def slug(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.") or "x"


def export_name(suite: str, workload: str) -> str:
    """``<suite>-<workload>``: the HTML anchor (``export-…``) and the file name (``winner-….yaml``)."""
    return f"{slug(suite)}-{slug(workload)}"


def winner(report: Mapping[str, Any], suite: str, workload: str) -> Best | None:
    """The config the report answers with for ``suite`` × ``workload`` (the same one report.html shows)."""
    return headline(best_per_load(report, suite, workload))


def launch_command(model_path: str, served_model_name: str, argv: Sequence[Any], *,
                   env: Mapping[str, Any] | None = None, port: int = EXPORT_PORT) -> str:
    """``python -m sglang.launch_server --model-path ... --host 0.0.0.0 --port 30000 <flags>``, non-secret env
    assignments in front (secret-named ones are left to the shell), secret flag values as ``"$VAR"``."""
    from pytest_sglang_tune.backends.ome_manifest import argv_with_name
    from pytest_sglang_tune.redact import is_secret_name, shell_words

    assigns = [shlex.quote(f"{k}={v}") for k, v in sorted((env or {}).items()) if not is_secret_name(str(k))]
    words = [*LAUNCHER, "--model-path", shlex.quote(model_path), "--host", "0.0.0.0", "--port", str(port)]
    return " ".join([*assigns, *words, *shell_words(argv_with_name(argv, served_model_name))])


def _deployed(best: Best, source: Source) -> tuple[list[str], int]:
    """The winner's argv and GPU count, as the engine renders them for a deploy (``table.to_argv(cfg.args)``);
    a config outside the expanded grid is rebuilt from its result's ``server_args``."""
    exp = source.expansion
    cfg = next((c for c in exp.configs if c.config_id == best.config_id), None)
    if cfg is not None:
        return list(exp.flags.to_argv(cfg.args)), int(cfg.gpus)
    args = {"--" + str(k).lstrip("-"): v for k, v in (best.result.get("server_args") or {}).items()}
    return list(exp.flags.to_argv(args)), int(best.result.get("gpus_required") or 1)


def _docker(entry: dict[str, Any], best: Best, suite: Any, argv: list[str], gpus: int, backend: str,
            options: Any) -> None:
    from pytest_sglang_tune.backends.docker_ops import docker_run_command

    settings = dict(suite.backend_settings("docker"))
    ours = backend == "docker"
    if ours and getattr(options, "hf_cache", None):
        settings["hf_cache"] = options.hf_cache
    image = (getattr(options, "image", None) if ours else None) or settings.get("image")
    if not image:
        entry["notes"].append("no docker run line: the suite names no image (backends.docker.image)")
        return
    entry["image"] = str(image)
    if ours:
        entry["image_digest"] = best.result.get("image_digest")
    entry["docker_run"] = docker_run_command(image=str(image), model_path=suite.model_path,
                                             served_model_name=suite.served_name, argv=argv, gpus=gpus,
                                             settings=settings)


def _ome(entry: dict[str, Any], best: Best, suite: Any, argv: list[str], gpus: int, backend: str,
         options: Any) -> None:
    from pytest_sglang_tune.backends.ome_manifest import export_inference_service_yaml
    from pytest_sglang_tune.backends.ome_objects import load_manifest

    settings = dict(suite.backend_settings("ome"))
    if backend == "ome" and not settings.get("namespace") and getattr(options, "namespace", None):
        settings["namespace"] = options.namespace
    try:
        runtime = (load_manifest(settings["create_runtime"], "backends.ome.create_runtime")
                   if settings.get("create_runtime") else None)
        text = export_inference_service_yaml(suite=suite.name, config_id=best.config_id, settings=settings,
                                             served_model_name=suite.served_name, argv=argv, gpus=gpus,
                                             runtime=runtime)
    except TuneError as exc:
        entry["notes"].append(f"no InferenceService: {exc}")
        return
    entry["inference_service_yaml"] = text
    entry["inference_service_file"] = f"winner-{export_name(suite.name, best.workload)}.yaml"
    if runtime is None:
        entry["notes"].append("the runner's container name and non-GPU resources come from the serving runtime "
                              "(OME merges them); the manifest sets the GPUs")


def export_winner(best: Best, source: Source, *, backend: str, options: Any = None) -> dict[str, Any]:
    """One ``exports.<suite>.<workload>`` entry (docs/report-schema.md)."""
    suite = source.suite
    argv, gpus = _deployed(best, source)
    local_env = suite.backend_settings("local").get("env") if backend == "local" else None
    entry: dict[str, Any] = {
        "config_id": best.config_id, "label": short_label(best.result), "load": best.load,
        "load_label": load_label(best.load), "score": best.score, "slo_pass": best.slo_pass,
        "tied_with": list(best.tied_with), "backend": backend, "gpus": gpus,
        "launch_command": launch_command(suite.model_path, suite.served_name, argv, env=local_env),
        "docker_run": None, "image": None, "image_digest": None,
        "inference_service_yaml": None, "inference_service_file": None, "notes": [],
    }
    if backend == "docker" or "docker" in suite.backends:
        _docker(entry, best, suite, argv, gpus, backend, options)
    if backend == "ome" or "ome" in suite.backends:
        _ome(entry, best, suite, argv, gpus, backend, options)
    return entry


def build_exports(report: Mapping[str, Any], sources: Mapping[str, Source], *, backend: str,
                  options: Any = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``report["exports"]``: ``{suite: {workload: export}}`` for every suite × workload with a ranked result.
    A suite that could not be re-read gets ``{config_id, error}`` entries."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for suite in suite_names(report):
        for workload in workloads(suite_results(report, suite)):
            best = winner(report, suite, workload)
            if best is None:
                continue
            source = sources.get(suite)
            if source is None:
                entry = {"config_id": best.config_id, "error": f"suite {suite!r} could not be re-read: "
                         "nothing to export from"}
            else:
                entry = export_winner(best, source, backend=backend, options=options)
            out.setdefault(suite, {})[workload] = entry
    return out


def export_lines(report: Mapping[str, Any], run_dir: Path | None = None) -> list[str]:
    """The terminal's pointers: ``export the winner of s/chat (tp2-lpm): reports/<run>/winner-s-chat.yaml``
    (the report.html anchor when there is no manifest)."""
    lines = []
    base = f"{run_dir}/" if run_dir is not None else ""
    for suite, per_workload in (report.get("exports") or {}).items():
        for workload, entry in per_workload.items():
            if entry.get("error"):
                continue
            where = (f"{base}{entry['inference_service_file']}" if entry.get("inference_service_file")
                     else f"{base}report.html#export-{export_name(suite, workload)}")
            tied = f", tied with {len(entry['tied_with'])} more" if entry.get("tied_with") else ""
            lines.append(f"export the winner of {suite}/{workload} ({entry.get('label')}{tied}): {where}")
    return lines
