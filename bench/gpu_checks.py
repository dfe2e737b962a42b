"""Checks before a GPU session (bench/gpu_run.sh --check): the wheels in .whl/, the size of
what travels, the data archive, and what $OUT would send back. Used by bench/gpu_tools.py.

Only the standard library and ``packaging`` at import time: the checks must run where torch or
the project's own dependencies are missing, and say what is missing.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent

# The device tool's limits (/work/.library/device/README.md): what travels, what comes back.
TRAVEL_LIMIT = 64 * 2**20
OUT_MAX_FILES = 8
OUT_MAX_FILE = 16 * 2**20
OUT_MAX_TOTAL = 64 * 2**20
OUT_MAX_DEPTH = 2  # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

# shared/data/README.md: the CIFAR-10 (JPEG q75) archive that the training part reads.
ARCHIVE = ".data/cifar10-jpeg.tar.gz"
ARCHIVE_SHA256 = "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4"

# What the GPU image already holds, of what pyro_ssvi and its wheels need (KINDS.md, "Python
# packages already there", read 2026-11-17). Anything else must come as a wheel in .whl/.
PREINSTALLED = {
    "torch", "torchvision", "numpy", "tqdm", "matplotlib", "pillow", "scikit-learn", "scipy", "joblib",
    "threadpoolctl", "safetensors", "opt-einsum", "packaging", "pyyaml", "typing-extensions", "filelock",
    "sympy", "networkx", "jinja2", "fsspec", "setuptools", "triton", "contourpy", "cycler", "fonttools",
    "kiwisolver", "pyparsing", "python-dateutil", "six", "mpmath", "markupsafe",
}
# No wheel of these on the index: build one here with `pip wheel --no-deps`.
SDIST_ONLY = {"antlr4-python3-runtime", "uncertainty-calibration"}
# The GPU machine's interpreter, for Requires-Dist markers.
TARGET_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "extra": "",
}
PLATFORMS = "".join(f" --platform {p}" for p in (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
    "manylinux1_x86_64"))


def canon(name: str) -> str:
    """PEP 503 normalized project name (``Pyro_PPL`` -> ``pyro-ppl``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------ wheels
def fetch_command(name: str, spec: str = "") -> str:
    """The command that puts ``name`` into .whl/ (the recipe at the top of gpu_run.sh)."""
    pin = name + (spec or "")
    if canon(name) in SDIST_ONLY:
        return f"python3 -m pip wheel --no-deps -w .whl '{pin}'"
    return (f"python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp"
            f"{PLATFORMS} -d .whl '{pin}'")


def _tag_ok(tag) -> bool:
    """Whether a wheel tag installs on CPython 3.12, Linux x86_64."""
    interp, abi, plat = tag.interpreter, tag.abi, tag.platform
    plat_ok = plat == "any" or (plat.startswith("manylinux") and plat.endswith("_x86_64"))
    if interp in ("py3", "py312", "cp312") and abi in ("none", "cp312"):
        return plat_ok
    m = re.fullmatch(r"cp3(\d+)", interp)
    return bool(m) and abi == "abi3" and int(m.group(1)) <= 12 and plat_ok


def read_wheel(path: Path) -> Tuple[str, str, List[str]]:
    """``(name, version, Requires-Dist lines)`` from a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
        if meta is None:
            raise ValueError("no */METADATA inside")
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]  # headers end at the first blank line (the description follows)
    fields: Dict[str, List[str]] = {}
    for line in head.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), []).append(value.strip())
    return fields["Name"][0], fields["Version"][0], fields.get("Requires-Dist", [])


def setup_requirements(setup_py: Path) -> List[str]:
    """``install_requires`` of setup.py, read without running it."""
    tree = ast.parse(setup_py.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return list(ast.literal_eval(node.value))
    raise ValueError(f"{setup_py}: no install_requires=[...] found")


def check_wheels(whl_dir: Path, roots: List[str]) -> Tuple[List[str], List[str]]:
    """Errors and notes: does ``whl_dir`` with the GPU image cover ``roots`` and all they need?"""
    from packaging.requirements import Requirement
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    errors: List[str] = []
    notes: List[str] = []
    wheels: Dict[str, Tuple[str, List[str], Path]] = {}
    files = sorted(whl_dir.glob("*.whl")) if whl_dir.is_dir() else []
    if not files:
        errors.append(f"{whl_dir}: no wheels. Expected one per package the GPU image lacks; build them with the "
                      f"recipe at the top of bench/gpu_run.sh")
    for f in files:
        try:
            fname_name, _, _, tags = parse_wheel_filename(f.name)
            name, version, requires = read_wheel(f)
        except (InvalidWheelFilename, ValueError, KeyError, zipfile.BadZipFile) as exc:
            errors.append(f"{f.name}: not a readable wheel ({exc}); delete it and fetch it again")
            continue
        key = canon(name)
        if not any(_tag_ok(t) for t in tags):
            errors.append(f"{f.name}: built for {sorted(str(t) for t in tags)}, not CPython 3.12 on Linux x86_64; "
                          f"replace it: {fetch_command(name, '==' + version)}")
        if key in wheels:
            errors.append(f"{f.name} and {wheels[key][2].name}: two versions of {key} (pip refuses the whole "
                          f"install); delete one")
            continue
        wheels[key] = (version, requires, f)
    todo = [(Requirement(r), "setup.py") for r in roots]
    seen = set()
    while todo:
        req, why = todo.pop()
        if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
            continue  # an extra, or another Python / platform
        key = canon(req.name)
        if key in seen:
            continue
        seen.add(key)
        if key in PREINSTALLED:
            continue
        if key not in wheels:
            errors.append(f"missing wheel for {key}{req.specifier} (needed by {why}); not on the GPU image, "
                          f"so it must travel in .whl/: {fetch_command(key, str(req.specifier))}")
            continue
        version, requires, f = wheels[key]
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            errors.append(f"{f.name}: {key} {version} does not satisfy {req.specifier} (needed by {why}); "
                          f"replace it: {fetch_command(key, str(req.specifier))}")
        todo.extend((Requirement(r), f"{key} {version}") for r in requires)
    unused = sorted(set(wheels) - seen)
    if unused:
        notes.append(f"wheels nothing needs (they travel for nothing): {', '.join(unused)}")
    notes.append(f"wheels: {len(wheels)} in {whl_dir}, covering {len(seen - PREINSTALLED)} packages the image "
                 f"lacks: {', '.join(sorted(seen - PREINSTALLED))}")
    return errors, notes


# ------------------------------------------------------------------------------ sizes, data
def _git_files(repo: Path, *args: str) -> List[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", *args], capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _size(path: Path) -> int:
    if path.is_symlink() or not path.exists():
        return 0  # a link travels as a link; a tracked file deleted here does not travel
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def travel_sizes(repo: Path, carry: List[str]) -> Dict[str, int]:
    """Bytes that travel: tracked files, untracked files git does not ignore, and each carried path."""
    sizes = {
        "tracked": sum(_size(repo / p) for p in _git_files(repo)),
        "untracked, not ignored": sum(_size(repo / p) for p in _git_files(repo, "--others", "--exclude-standard")),
    }
    shared = repo / "shared"
    ignored = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", "shared"]).returncode == 0
    if shared.is_dir() and ignored:  # the device tool sends a checkout's shared/ even when git ignores it
        sizes["shared/"] = _size(shared)
    for c in carry:
        sizes[c] = _size(repo / c)
    return sizes


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_data(repo: Path) -> Tuple[List[str], List[str]]:
    archive = repo / ARCHIVE
    if not archive.is_file():
        return [f"{ARCHIVE} is missing: the training part reads it there. "
                f"Run: mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/"], []
    digest = sha256(archive)
    if digest != ARCHIVE_SHA256:
        return [f"{ARCHIVE}: sha256 {digest}, expected {ARCHIVE_SHA256} (shared/data/README.md); "
                f"copy it again from ../shared/data/"], []
    notes = [f"{ARCHIVE}: {archive.stat().st_size / 2**20:.1f} MiB, sha256 ok"]
    others = [p.name for p in archive.parent.iterdir() if p != archive]
    if others:  # e.g. decoded caches of an earlier local run: 185 MB for CIFAR-10
        notes.append(f"warning: .data/ also holds {', '.join(sorted(others))}: it all travels; delete what the "
                     f"GPU run does not need")
    return [], notes


def check_travel(repo: Path, carry: List[str]) -> Tuple[List[str], List[str]]:
    sizes = travel_sizes(repo, carry)
    total = sum(sizes.values())
    line = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
    note = f"travels: {total / 2**20:.1f} MiB of {TRAVEL_LIMIT / 2**20:.0f} MiB ({line})"
    if total >= TRAVEL_LIMIT:
        return [f"{note}: over the device tool's limit; ignore or delete what the run does not need"], []
    return [], [note]


# ------------------------------------------------------------------------------ $OUT
def check_out(out: Path) -> Tuple[List[str], List[str]]:
    """Would everything under ``out`` come back from the device tool?"""
    errors: List[str] = []
    files = sorted(p for p in out.rglob("*") if not p.is_dir())
    for p in files:
        rel = p.relative_to(out)
        if p.is_symlink() or not p.is_file():
            errors.append(f"$OUT/{rel}: not a plain file, it would not come back")
        elif p.stat().st_size >= OUT_MAX_FILE:
            errors.append(f"$OUT/{rel}: {p.stat().st_size / 2**20:.1f} MiB, over {OUT_MAX_FILE / 2**20:.0f} MiB")
        if len(rel.parts) - 1 > OUT_MAX_DEPTH:
            errors.append(f"$OUT/{rel}: more than {OUT_MAX_DEPTH} folders down, it would not come back")
        if not all(OUT_NAME.match(part) for part in rel.parts):
            errors.append(f"$OUT/{rel}: names may hold only letters, digits, '.', '_' and '-'")
    if len(files) > OUT_MAX_FILES:
        errors.append(f"$OUT holds {len(files)} files, at most {OUT_MAX_FILES} come back: "
                      f"{', '.join(str(p.relative_to(out)) for p in files)}")
    total = sum(p.stat().st_size for p in files if p.is_file())
    if total > OUT_MAX_TOTAL:
        errors.append(f"$OUT holds {total / 2**20:.1f} MiB, at most {OUT_MAX_TOTAL / 2**20:.0f} MiB come back")
    listing = ", ".join(f"{p.relative_to(out)} ({p.stat().st_size / 1024:.1f} KiB)" for p in files if p.is_file())
    return errors, [f"$OUT: {len(files)} files, {total / 1024:.1f} KiB: {listing}"]


def part_failures(results: Path) -> List[str]:
    """Parts whose end line in results.jsonl has a non-zero rc (or that never ended)."""
    started, bad = [], []
    for line in results.read_text().splitlines() if results.is_file() else []:
        row = json.loads(line)
        if row.get("event") == "start":
            started.append(row["part"])
        elif row.get("event") == "end":
            started.remove(row["part"])
            if row["rc"] != 0:
                bad.append(f"part {row['part']} ended with rc={row['rc']} (see its log)")
    return bad + [f"part {p} started but never ended" for p in started]
