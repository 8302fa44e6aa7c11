"""``sglang-tune predict SUITE.yaml``: rank a suite's whole grid on the sim's virtual clock, before any GPU time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pytest_sglang_tune.errors import SuiteError, TuneError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="predict a suite's ranking and GPU cost on the sim's virtual clock",
                       description="Run every config × workload × load of a suite on the simulated SGLang's "
                                   "scheduler on a virtual clock (no HTTP, no sleeping) and print the predicted "
                                   "ranking under the suite's SLOs and objective, the configs predicted infeasible, "
                                   "and the GPU-hours measuring the whole grid for real would take.")
    p.add_argument("suite", type=Path, metavar="SUITE.yaml")
    p.add_argument("--gpu", default=None, help="the GPU to predict for (a sim GPU name; default: the suite's "
                                               "backends.sim.gpu, else h100_sxm)")
    p.add_argument("--top", type=int, default=3, metavar="K", help="configs shown per workload × load (default 3)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the prediction as JSON")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="worker processes (default: every core)")


def check_gpu(name: str) -> str:
    """A sim GPU's canonical name, or a ``SuiteError`` that lists the known ones."""
    from pytest_sglang_tune.sim.gpus import known_gpu

    try:
        return known_gpu(name)
    except ValueError as exc:
        raise SuiteError(f"--gpu={exc}") from None


def prediction_json(prediction: Any, ranking: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "suite": prediction.suite.name, "gpu": prediction.gpu, "elapsed_s": round(prediction.elapsed_s, 3),
        "grid_gpu_hours": round(prediction.grid_gpu_s / 3600.0, 4),
        "configs": [{"config_id": c.config.config_id, "display": c.config.display, "gpus": c.config.gpus,
                     "infeasible": c.infeasible, "deploy_s": c.deploy_s, "gpu_s": round(c.gpu_s, 3)}
                    for c in prediction.configs],
        "results": [r.to_dict() for r in prediction.results],
        "ranking": ranking,
    }


def run(args: argparse.Namespace) -> int:
    from pytest_sglang_tune.predict.grid import load_and_predict
    from pytest_sglang_tune.report.json import dumps
    from pytest_sglang_tune.report.store import atomic_write_text
    from pytest_sglang_tune.report.terminal import prediction_lines

    try:
        gpu = check_gpu(args.gpu) if args.gpu else None
        if args.top < 1:
            raise SuiteError(f"--top={args.top} must be at least 1")
        prediction = load_and_predict(args.suite, gpu=gpu, jobs=args.jobs)
    except SuiteError as exc:
        print(f"sglang-tune predict: error: {exc}", file=sys.stderr)
        return 2 if str(exc).startswith(("--gpu", "--top")) else 1
    except (TuneError, OSError) as exc:
        print(f"sglang-tune predict: error: {exc}", file=sys.stderr)
        return 1
    ranking = prediction.ranking()
    for line in prediction_lines(prediction, ranking, top=args.top):
        print(line)
    if args.json:
        atomic_write_text(args.json, dumps(prediction_json(prediction, ranking)))
        print(f"wrote {args.json}")
    return 0


__all__ = ["add_parser", "check_gpu", "prediction_json", "run"]
