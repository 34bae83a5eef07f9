"""The wheel holds every module of the package folders, and ``segs`` imports lazily."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "segs": "segs",
    "protocol": "segs/protocol",
    "edge": "segs/edge",
    "hub": "segs/hub",
    "firmware-sim": "segs/sim",
}
DATA_SUFFIXES = {".py", ".toml", ".json", ".typed", ".ini", ".mako", ".sql"}


def _expected_files() -> set[str]:
    expected = set()
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in DATA_SUFFIXES:
                expected.add(f"{package}/{path.relative_to(ROOT / folder).as_posix()}")
    return expected


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".mypy-tree", ".*_cache"
    )
    shutil.copytree(ROOT, source, ignore=ignore)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(work / "out"),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "out").glob("segs-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_contains_every_module_and_data_file(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    missing = sorted(_expected_files() - names)
    assert not missing, f"left out of the wheel: {missing}"
    assert "segs/protocol/examples/windows.json" in names
    assert any(n.startswith("segs/protocol/device_profiles/") for n in names)


def test_the_wheel_has_nothing_outside_the_segs_package(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"segs"}


def test_the_wheel_declares_the_console_script_and_extras(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "segs = segs.cli:main" in wheel.read(entry_points).decode()
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    text = wheel.read(metadata).decode()
    for extra in ("edge", "sim", "hub", "dev"):
        assert f"Provides-Extra: {extra}" in text
    assert 'pymodbus[serial]~=3.16.0; extra == "edge"' in text


def _run_segs(*args: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``segs`` in a fresh interpreter in which importing ``blocked`` modules fails."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}:\n"
        "            raise ModuleNotFoundError(f'blocked {name}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from segs.cli import main\n"
        f"code = main({list(args)!r})\n"
        "heavy = {'pymodbus', 'numpy', 'fastapi', 'aiomqtt', 'sqlalchemy', 'psycopg'}\n"
        "print('IMPORTED', sorted(heavy & set(m.split('.')[0] for m in sys.modules)))\n"
        "raise SystemExit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def test_segs_protocol_needs_no_edge_or_hub_dependency() -> None:
    heavy = ("pymodbus", "numpy", "fastapi", "aiomqtt", "sqlalchemy", "psycopg", "uvicorn")
    result = _run_segs("protocol", "profiles", blocked=heavy)
    assert result.returncode == 0, result.stderr
    assert "sdm630" in result.stdout
    assert "IMPORTED []" in result.stdout


def test_segs_without_a_command_lists_the_commands() -> None:
    result = _run_segs()
    assert result.returncode == 2
    assert "protocol" in result.stdout
    unknown = _run_segs("frobnicate")
    assert unknown.returncode == 2
    assert "unknown command 'frobnicate'" in unknown.stderr


def test_segs_version() -> None:
    result = _run_segs("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("segs 0.")
