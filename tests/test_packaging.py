"""The wheel works outside its checkout: build it offline, check what it carries, install it into a
fresh venv in a temporary folder and run ``mapo`` there.

The fresh venv gets mapo from the wheel only (``--no-deps``); its dependencies come from this
checkout's .venv through a ``.pth`` file that appends .venv's site-packages to ``sys.path``. A
plain path line does not run .venv's own .pth files, so the editable-install finder that maps
``mapo`` to this checkout is never loaded; the test checks that ``mapo.__file__`` is inside the
new venv. Takes ~20-40 s (the wheel build dominates).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_dir

# what setuptools reads to build the wheel (serve/ goes along: the wheel must leave it out)
SOURCES = ("pyproject.toml", "README.md", "mapo", "conf", "prompts", "serve")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline from a copy of the sources (the shared working tree gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        cwd=src,
        env=env,
        timeout=300,
    )
    (found,) = out.glob("mapo-*.whl")
    return found


def _packages(root: Path) -> set[str]:
    return {str(p.parent.relative_to(root)) for p in root.rglob("__init__.py") if "__pycache__" not in p.parts}


def test_wheel_carries_conf_prompts_templates_and_every_package_but_no_serve(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    assert "serve" not in tops and not any(n.startswith("serve/") or n == "serve.py" for n in names), sorted(tops)
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == {"mapo"}, sorted(tops)
    for f in (REPO / "conf").rglob("*.yaml"):
        assert f"mapo/_conf/{f.relative_to(REPO / 'conf')}" in names, (
            f"conf/{f.relative_to(REPO / 'conf')} not in the wheel"
        )
    for f in (REPO / "prompts").rglob("*"):
        if f.is_file():
            assert f"mapo/_prompts/{f.relative_to(REPO / 'prompts')}" in names, (
                f"{f.relative_to(REPO)} not in the wheel"
            )
    assert "mapo/_prompts/eval/demo_pairs.jsonl" in names and "mapo/_conf/eval_data/demo.yaml" in names
    assert "mapo/report/templates/report.html" in names
    assert any(n.startswith("mapo/serving/chat_templates/") and n.endswith(".jinja") for n in names)
    missing = sorted(p for p in _packages(REPO / "mapo") if f"mapo/{p}/__init__.py".replace("/./", "/") not in names)
    assert not missing, (
        f"packages of the checkout missing from the wheel (pyproject [tool.setuptools] packages): {missing}"
    )


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv outside the checkout with the wheel installed and .venv's dependencies visible."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root.parent, env=env)
    python = root / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        cwd=root.parent,
        env=env,
    )
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root.parent, env
        ).stdout.strip()
    )
    (site / "zz_mapo_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def _mapo(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MAPO_SHARED")}
    return _run([str(venv / "bin" / "mapo"), *args], cwd=cwd, env=env)


def test_installed_mapo_runs_outside_the_checkout(venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import mapo, mapo.core.config as c; print(mapo.__file__); print(c.resource_dir('conf'))",
        ],
        cwd=tmp_path,
        env=env,
    ).stdout.split()
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), (
        f"mapo comes from {where}, not the new venv"
    )
    assert not any(Path(p).resolve().is_relative_to(REPO) for p in where)

    assert "build" in _mapo(venv, "--help", cwd=tmp_path).stdout
    job = _mapo(venv, "build", "--cfg", "job", cwd=tmp_path).stdout
    assert "roles:" in job and "generator:" in job and "models:" in job, job[-2000:]
    assert (
        "eval_data:\n  loader: local\n  path: prompts/eval/demo_pairs.jsonl"
        in _mapo(venv, "evaluate", "eval_data=demo", "--cfg", "job", cwd=tmp_path).stdout
    )


def test_installed_mapo_agreement_reproduces_the_published_kappa(venv, tmp_path):
    shared = shared_dir()
    if shared is None or not (shared / "data" / "faireval" / "mapo-judgments").is_dir():
        pytest.skip("shared data absent: ../shared/data/faireval (set MAPO_SHARED) holds the authors' judgements")
    faireval = shared / "data" / "faireval"
    out = _mapo(
        venv,
        "agreement",
        "--authors",
        str(faireval / "mapo-judgments"),
        "--humans",
        str(faireval / "fair_eval.jsonl"),
        cwd=tmp_path,
    ).stdout
    assert any(line.split()[:2] == ["gpt-4o", "judge"] and "0.327" in line.split() for line in out.splitlines()), out
    import json

    results = json.loads((tmp_path / "agreement.authors.json").read_text())["results"]
    (gpt4o,) = [e for e in results if e["judge"] == "gpt-4o" and e["kind"] == "judge"]
    assert round(gpt4o["kappa"], 4) == 0.3265


def test_installed_mapo_finds_the_shipped_demo_pairs(venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    code = (
        "from mapo.data.humans import load_items; "
        "rows, info = load_items({'loader': 'local', 'path': 'prompts/eval/demo_pairs.jsonl', 'limit': None}); "
        "print(info['n_items'])"
    )
    assert _run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=env).stdout.strip() == "14"


def test_every_subpackage_is_listed_for_the_wheel():
    """pyproject lists packages explicitly (conf/ and prompts/ are mapped into mapo): a new
    subpackage that is not listed would be missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "mapo").rglob("__init__.py")
        if p.parent.name[0] != "_"
    }
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
