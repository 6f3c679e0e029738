"""The project's layout promises: folders at the root, one import root, pure schemas and steps."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


TOPS = ("schemas", "topology", "agents", "ops")
STAGES = ("sources", "normalize", "hydrate", "calc", "publish", "derive", "vigil", "gateway")


def test_pyproject_packages_match_the_folders() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(cfg["packages"])
    found = set()
    for top in TOPS:
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            found.add("marketswarm." + ".".join(rel.parts))
    assert declared == found
    assert cfg["package-dir"] == {f"marketswarm.{t}": t for t in TOPS}
    for top in TOPS:
        assert (ROOT / top / "py.typed").exists()
    for d in ("topology", "agents", "schemas", "ops", "tests"):
        assert (ROOT / d).is_dir()
    assert not (ROOT / "tests" / "__init__.py").exists()


def test_agents_is_one_folder_per_stage() -> None:
    """agents/ holds the stages, each a package, and only the catalog that lists them; the
    independence contract (pyproject.toml) names the same stages."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c for c in contracts if c["type"] == "independence")["modules"]
    assert independent == [f"marketswarm.agents.{s}" for s in STAGES]
    folders = {p.name for p in (ROOT / "agents").iterdir() if (p / "__init__.py").exists()}
    assert folders == set(STAGES)
    assert {p.name for p in (ROOT / "agents").glob("*.py")} == {"__init__.py", "catalog.py"}
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    assert layers == [f"marketswarm.{t}" for t in reversed(TOPS)]


def test_the_tests_mirror_the_folders() -> None:
    """Unit tests live under tests/unit/<folder>/, one folder per stage or top-level folder (this one,
    about the repository as a whole, beside them)."""
    units = {p.name for p in (ROOT / "tests" / "unit").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert units <= {*STAGES, "schemas", "topology", "ops"}, units
    loose = {p.name for p in (ROOT / "tests" / "unit").glob("test_*.py")}
    assert loose == {"test_layout.py"}, f"a unit test belongs in its folder: {loose}"


def test_every_module_has_a_docstring_and_stays_small() -> None:
    for top in TOPS:
        for path in (ROOT / top).rglob("*.py"):
            if top == "ops" and "vendor" in path.parts:
                continue
            tree = ast.parse(path.read_text())
            assert ast.get_docstring(tree), f"{path} has no module docstring"
            assert len(path.read_text().splitlines()) <= 500, f"{path} is too long: split it"


def test_stream_key_literals_live_only_in_streams_py() -> None:
    for top in TOPS:
        for path in (ROOT / top).rglob("*.py"):
            if path.name == "streams.py":
                continue
            text = path.read_text()
            assert '"ms:' not in text and "'ms:" not in text, f"{path} spells a key literal"


def test_readme_lists_every_setting_and_the_two_commands() -> None:
    from marketswarm.topology.settings import env_help

    readme = (ROOT / "README.md").read_text()
    for var, _, _ in env_help():
        assert f"`{var}`" in readme, f"README.md does not document {var}"
    assert "make run" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def _lint_imports(root: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency: make install"
    env = dict(os.environ, PYTHONSAFEPATH="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [exe, "--no-cache"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=180)


def test_the_import_layers_hold() -> None:
    """`make lint` runs import-linter; this runs it in `make test` too, so CI holds the layers."""
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        ("schemas/occ.py", "import marketswarm.topology.streams", "Layers"),
        ("topology/graph.py", "import marketswarm.agents.catalog", "Layers"),
        ("agents/calc/grid.py", "import marketswarm.ops.config", "Layers"),
        ("agents/sources/writer.py", "import marketswarm.agents.normalize.parsing", "Stages"),
        ("agents/derive/flies.py", "import marketswarm.agents.publish.tiles", "Stages"),
    ],
)
def test_a_planted_import_against_the_contracts_fails(tmp_path: Path, module: str, planted: str, broken: str) -> None:
    """The contracts can fail: a copy of the package with one import planted against them breaks the
    named contract (an upward import between layers, or one stage importing another)."""
    pkg = tmp_path / "src" / "marketswarm"
    pkg.mkdir(parents=True)
    for top in TOPS:
        shutil.copytree(ROOT / top, pkg / top, ignore=shutil.ignore_patterns("__pycache__", "static", "k8s", "vendor"))
    target = pkg / module
    target.write_text(target.read_text() + f"\n{planted}  # planted\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = _lint_imports(tmp_path, tmp_path / "src")
    assert done.returncode != 0, done.stdout[-2000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(broken))
    assert line.endswith("BROKEN"), done.stdout[-3000:]


def test_every_command_line_in_the_readme_is_one_the_cli_has() -> None:
    """Each `marketswarm ...` line of the README's code blocks names real commands, and each of its
    options is one those commands take; the way onto PATH it gives exists in the Makefile's venv."""
    import re
    import shlex

    from typer.main import get_command

    from marketswarm.ops.cli import app

    readme = (ROOT / "README.md").read_text()
    lines, in_block = [], False
    for ln in readme.splitlines():
        if ln.startswith("```"):
            in_block = not in_block
        elif in_block and (cmd := ln.split(" #")[0].strip().removeprefix("try:").strip()).startswith("marketswarm "):
            lines.append(cmd)
    assert len(lines) >= 15
    root = get_command(app)
    for line in lines:
        cmd, path = root, ["marketswarm"]
        for token in shlex.split(line)[1:]:
            subs = getattr(cmd, "commands", {})
            if token in subs:
                cmd = subs[token]
                path.append(token)
            elif token.startswith("--"):
                known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
                if cmd is root or not known:
                    known |= {o for p in root.params for o in p.opts}
                assert token.split("=")[0] in known, f"README: {line!r}: {' '.join(path)} has no {token}"
        assert cmd is not root, f"README: {line!r} names no command"
    assert ". .venv/bin/activate" in readme
    assert re.search(r"^VENV\s*:?=\s*\.venv", (ROOT / "Makefile").read_text(), re.M)


def test_the_vendored_browser_libraries_are_the_pinned_ones_with_their_licenses() -> None:
    """What `make vendor` unpacked is what its manifest says (sha256 of every file), at the pinned
    versions, each with its license; the pages load them from /static, never from a CDN."""
    import hashlib
    import json
    import re

    static = ROOT / "agents" / "gateway" / "static"
    pins = json.loads((ROOT / "ops" / "vendor" / "pins.json").read_text())
    manifest = json.loads((static / "vendor" / "VENDORED.json").read_text())
    assert {(m["package"], m["version"]) for m in manifest} == {(p["package"], p["version"]) for p in pins.values()}
    for m in manifest:
        names = {Path(f["file"]).name for f in m["files"]}
        assert "LICENSE" in names, m["package"]
        for f in m["files"]:
            body = (static / "vendor" / f["file"]).read_bytes()
            assert len(body) == f["bytes"] and hashlib.sha256(body).hexdigest() == f["sha256"], f["file"]
    for page in ("index.html", "login.html"):
        assert not re.search(r"(src|href)=\"(https?:)?//", (static / page).read_text()), page
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^vendor:\n\t.*ops/vendor/vendor.py", makefile, re.M)
