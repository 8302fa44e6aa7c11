"""Build a small root filesystem (a tar on stdout or in a file) holding this machine's Python and what the sim needs.

Used by ``.ci/setup-docker.sh`` to make the Docker test image without any registry: the tar is ``docker import``-ed,
then ``docker/Dockerfile`` adds our package. What goes in:

- the interpreter (``sys.base_prefix``, kept at the same absolute path, so its RUNPATH and prefix still hold),
  its standard library without tests, IDLE, tkinter and ensurepip;
- the installed files of the distributions the simulated server imports, and their dependencies (from the
  distributions' own metadata, ``importlib.metadata``);
- every shared library those binaries load (from ``ldd``); other names of a file become symlinks.

Usage: ``python3 docker/build_rootfs.py OUT.tar``.
"""

from __future__ import annotations

import importlib.metadata as md
import io
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# what the simulated server imports at run time (pytest: our exception tree subclasses pytest.PytestWarning)
ROOTS = ("aiohttp", "uvloop", "PyYAML", "tokenizers", "pytest", "typing_extensions")
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages", "pydoc_data"}
# tokenizers requires huggingface-hub for downloads (hf_xet alone is 11 MB); the sim only reads local files
SKIP_DISTS = {"huggingface-hub"}
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_closure(roots: Iterable[str]) -> list[md.Distribution]:
    """The distributions named by ``roots`` and everything they require (extras and markers that do not apply
    are left out)."""
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if _norm(name) in seen or _norm(name) in SKIP_DISTS:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            print(f"build_rootfs: {name} is not installed; skipped", file=sys.stderr)
            continue
        seen[_norm(name)] = dist
        for req in dist.requires or ():
            if "extra ==" in req:
                continue
            if ";" in req and not _marker_ok(req.split(";", 1)[1]):
                continue
            m = _REQ_NAME.match(req)
            if m:
                todo.append(m.group(1))
    return list(seen.values())


def _marker_ok(marker: str) -> bool:
    try:
        from packaging.markers import Marker
    except ImportError:  # pragma: no cover - packaging comes with pip/pytest
        return True
    return bool(Marker(marker.strip()).evaluate())


def dist_files(dists: Iterable[md.Distribution]) -> Iterator[Path]:
    for dist in dists:
        for f in dist.files or ():
            p = Path(str(dist.locate_file(f))).resolve()
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc"):
                yield p


def stdlib_files(stdlib: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(stdlib):
        rel = Path(root).relative_to(stdlib)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in STDLIB_SKIP and not d.startswith("config-")]
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "tests", "test")]
        for name in files:
            if not name.endswith(".pyc") and not name.startswith("_tkinter"):
                yield Path(root) / name


def shared_libs(binaries: Iterable[Path]) -> set[Path]:
    """Every library ``ldd`` says the binaries load (resolved), and the dynamic loader itself."""
    libs: set[Path] = set()
    for b in binaries:
        out = subprocess.run(["ldd", str(b)], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            parts = line.split("=>")
            target = (parts[1] if len(parts) == 2 else parts[0]).strip().split(" (")[0].strip()
            if target.startswith("/"):
                libs.add(Path(target))
    return libs


def collect() -> list[Path]:
    prefix = Path(sys.base_prefix)
    exe = Path(sys.executable).resolve()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files: set[Path] = {exe}
    libdir = prefix / "lib"
    files |= {p.resolve() for p in libdir.glob("libpython3.*.so.*")}
    files |= set(stdlib_files(stdlib))
    files |= set(dist_files(dist_closure(ROOTS)))
    binaries = [exe, *(p for p in files if p.suffix == ".so" or ".so." in p.name)]
    files |= shared_libs(binaries)
    return sorted(files)


def extra_site_dirs() -> list[str]:
    """Where the collected distributions live when that is not the base interpreter's site-packages (a venv):
    the image's interpreter gets them on ``sys.path`` through a ``.pth`` file."""
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"]
    dirs = {str(Path(str(d.locate_file(""))).resolve()) for d in dist_closure(ROOTS)}
    return sorted(d for d in dirs if d != str(Path(base).resolve()))


def write_tar(out: Path, files: list[Path]) -> None:
    exe = Path(sys.executable).resolve()
    base_site = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"]
    extra = extra_site_dirs()
    with tarfile.open(out, "w") as tar:
        for d in ("tmp", "root", "etc", "usr/local/bin", "bin", "lib64"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        done: set[str] = set()
        for path in files:
            real = path.resolve()
            if str(real) not in done:
                tar.add(str(real), arcname=str(real).lstrip("/"), recursive=False)
                done.add(str(real))
            if str(path) != str(real) and str(path) not in done:  # /lib64/ld-linux... -> /lib/x86_64-linux-gnu/...
                link = tarfile.TarInfo(str(path).lstrip("/"))
                link.type, link.linkname = tarfile.SYMTYPE, str(real)
                tar.addfile(link)
                done.add(str(path))
        # /usr/local/bin/python3 -> the interpreter; /etc/passwd for getpass/pwd lookups; resolv/hosts for localhost
        for name in ("usr/local/bin/python3", "usr/local/bin/python"):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, str(exe)
            tar.addfile(link)
        texts = []
        if extra:  # packages installed into a venv: keep them importable by the base interpreter in the image
            texts.append((f"{base_site.lstrip('/')}/sglang_tune_image.pth", "\n".join(extra) + "\n"))
        passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        for name, text in (*texts, ("etc/passwd", passwd),
                           ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
                           ("etc/nsswitch.conf", "hosts: files dns\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    files = collect()
    write_tar(Path(argv[0]), files)
    size = sum(f.stat().st_size for f in files)
    print(f"build_rootfs: {len(files)} files, {size / 1e6:.0f} MB of content, Python {sys.version.split()[0]} "
          f"at {sys.base_prefix}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
