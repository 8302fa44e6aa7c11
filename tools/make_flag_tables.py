"""Generate the compact SGLang flag tables shipped in ``pytest_sglang_tune/data/sglang-flags-<version>.json``.

Input: the reference dumps ``sglang-server-args-<version>.json`` (one record per argparse option of
``sglang.launch_server``, see ``../shared/reference/README.md``). Output: facts only (names, aliases, dest,
type, action, nargs, default, choices, deprecation, replacement); help texts are read to derive replacements
but are not shipped. Flags renamed between versions are recorded in both directions under ``renamed``.

    python tools/make_flag_tables.py                      # ../shared/reference -> pytest_sglang_tune/data
    python tools/make_flag_tables.py --reference DIR --out DIR
    python tools/make_flag_tables.py --check              # exit 1 when the shipped tables are out of date
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_sglang_tune.flags import TABLE_FORMAT, compact_records, version_key  # noqa: E402

DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference"
DEFAULT_OUT = ROOT / "pytest_sglang_tune" / "data"
PREFIX = "sglang-server-args-"

# Flags that disappeared between two versions with a successor that is not detectable mechanically (the
# detectable case, an identical help text, is found by `find_renames`). Evidence in the comment of each.
CURATED_SUCCESSORS: dict[str, list[str]] = {
    # 0.5.23 configures CUDA graphs per phase; --cuda-graph-config's help calls the old ones "legacy flags".
    "--cuda-graph-max-bs": ["--cuda-graph-max-bs-decode", "--cuda-graph-max-bs-prefill"],
    "--cuda-graph-bs": ["--cuda-graph-bs-decode", "--cuda-graph-bs-prefill"],
    # NSA (DeepSeek native sparse attention) backends became DSA backends; same choice set plus new kernels.
    "--nsa-prefill-backend": ["--dsa-prefill-backend"],
    "--nsa-decode-backend": ["--dsa-decode-backend"],
    # Same type and default (18); both describe the depth of the n-gram trie.
    "--speculative-ngram-branch-length": ["--speculative-ngram-max-trie-depth"],
}


def read_reference(path: Path) -> list[dict[str, Any]]:
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list) or not all(isinstance(r, dict) and "name" in r for r in records):
        raise SystemExit(f"{path}: expected a list of argparse records with a 'name'")
    return records


def _options(records: list[dict[str, Any]]) -> set[str]:
    return {o for r in records for o in r.get("option_strings") or [r["name"]]}


def find_renames(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Old flags gone in ``new`` -> their successors: identical non-empty help and kind, or curated."""
    new_opts = _options(new)
    by_help: dict[tuple[str, Any, Any], list[str]] = {}
    for r in new:
        if r.get("help"):
            by_help.setdefault((r["help"], r.get("type"), r.get("action")), []).append(r["name"])
    renames: dict[str, list[str]] = {}
    for r in old:
        if any(o in new_opts for o in r.get("option_strings") or [r["name"]]):
            continue
        same = by_help.get((r.get("help") or "", r.get("type"), r.get("action")), [])
        successors = CURATED_SUCCESSORS.get(r["name"]) or (same if len(same) == 1 else [])
        if successors and all(s in new_opts for s in successors):
            renames[r["name"]] = successors
    return renames


def server_args_fields(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, str]:
    """Old dest -> ServerArgs attribute, where an old dest is an alias's name in ``new``.

    0.5.5.post3 registers ``--tensor-parallel-size, --tp-size`` (dest ``tensor_parallel_size``) and
    ``ServerArgs.from_cli_args`` copies it to ``tp_size``, the dest of ``--tp-size`` in 0.5.23.
    """
    new_dest = {o: r["dest"] for r in new for o in r.get("option_strings") or [r["name"]]}
    new_dests = set(new_dest.values())
    out: dict[str, str] = {}
    for r in old:
        if r["dest"] in new_dests:
            continue
        for o in r.get("option_strings") or []:
            if new_dest.get(o) == o[2:].replace("-", "_"):
                out[r["dest"]] = new_dest[o]
    return out


def build_tables(reference: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    versions = sorted(reference, key=version_key)
    renamed: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in versions}
    fields: dict[str, dict[str, str]] = {v: {} for v in versions}
    for older, newer in itertools.pairwise(versions):
        for old_name, successors in find_renames(reference[older], reference[newer]).items():
            renamed[newer][old_name] = {"in": older, "to": successors}
            for succ in successors:  # the newer name used with the older version
                renamed[older].setdefault(succ, {"in": newer, "to": [old_name]})
        fields[older] = server_args_fields(reference[older], reference[newer])
    tables = {}
    for v in versions:
        records = [dict(r, field=fields[v].get(r["dest"], r["dest"])) for r in reference[v]]
        tables[v] = {
            "format": TABLE_FORMAT,
            "version": v,
            "source": f"{PREFIX}{v}.json (argparse of sglang.launch_server, PyPI sglang=={v})",
            "flags": compact_records(records),
            "renamed": dict(sorted(renamed[v].items())),
        }
    return tables


def dump_table(table: Mapping[str, Any]) -> str:
    """One JSON object, compact, one flag per line (readable diffs)."""

    def c(value: object) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    head = {k: v for k, v in table.items() if k not in ("flags", "renamed")}
    parts = [f"{c(k)}:{c(v)}" for k, v in sorted(head.items())]
    for key in ("flags", "renamed"):
        body = ",\n".join(f"{c(name)}:{c(item)}" for name, item in table[key].items())
        parts.append(f"{c(key)}:{{\n{body}\n}}")
    return "{" + ",\n".join(parts) + "}\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--reference", type=Path, default=DEFAULT_REFERENCE, help="folder with sglang-server-args-*.json"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the tables are written")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a table differs")
    ap.add_argument("files", nargs="*", type=Path, help="reference files (default: all in --reference)")
    args = ap.parse_args(argv)
    files = args.files or sorted(args.reference.glob(f"{PREFIX}*.json"))
    if not files:
        ap.error(f"no {PREFIX}*.json in {args.reference}")
    reference = {f.name[len(PREFIX) : -len(".json")]: read_reference(f) for f in files}
    stale = []
    for version, table in build_tables(reference).items():
        target = args.out / f"sglang-flags-{version}.json"
        text = dump_table(table)
        if args.check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                stale.append(str(target))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"{target}: {len(table['flags'])} flags, {len(table['renamed'])} renames, {len(text)} bytes")
    if stale:
        print("out of date (run tools/make_flag_tables.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
