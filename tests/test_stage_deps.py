"""Each dvc.yaml stage's code deps are what the stage imports (tasks/stage_deps.py), never a hand-kept list."""
from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
import types

import pytest
from ruamel.yaml import YAML

from tasks.stage_deps import (
    CLI,
    DATA_FILES,
    PACKAGES,
    STAGES,
    Entry,
    StageDepsError,
    check,
    main,
    module_closure,
    stage_code_files,
    write,
)
from tests.conftest import REPO


def test_committed_dvc_yaml_lists_every_imported_module():
    """The check `python -m tasks.stage_deps --check` runs: a stage whose imported project module (or config file)
    is missing from its deps, or that lists something it does not import, fails here naming stage and file."""
    assert check(REPO / "dvc.yaml") == []


def test_check_names_stage_and_missing_file(tmp_path, capsys):
    dvc_yaml = tmp_path / "dvc.yaml"
    text = (REPO / "dvc.yaml").read_text()
    y = YAML()
    doc = y.load(text)
    doc["stages"]["explain"]["deps"].remove("detection/datasets/imageio.py")
    doc["stages"]["explain"]["deps"].append("detection/models")
    with open(dvc_yaml, "w") as fh:
        y.dump(doc, fh)
    assert check(dvc_yaml) == [
        f"{dvc_yaml}: stages.explain.deps: missing detection/datasets/imageio.py (the stage imports / reads it)",
        f"{dvc_yaml}: stages.explain.deps: extra detection/models (not imported by the stage; list files, not "
        f"folders)"]
    assert main(["--check", "--dvc-yaml", str(dvc_yaml)]) == 1
    assert "stages.explain.deps: missing detection/datasets/imageio.py" in capsys.readouterr().err


def test_write_keeps_data_deps_and_comments(tmp_path):
    """--write replaces only the code part of each stage's deps; data deps, their comments and the rest of the file
    stay; a second write changes nothing."""
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text("# top comment\nstages:\n  pull:                 # stage comment\n    cmd: xai-audit pull\n"
                        "    deps:\n      - flows/pull.py\n      - detection/datasets\n"
                        "      - data/raw            # input datasets\n      - tasks/params.py   # schema\n"
                        "    params:\n      - seed\n    outs:\n      - data/pulled\n")
    changed = write(dvc_yaml)
    assert "detection/datasets/imageio.py" in changed["pull"][0] and changed["pull"][1] == ["detection/datasets"]
    text = dvc_yaml.read_text()
    assert text.startswith("# top comment\nstages:\n  pull:                 # stage comment\n")
    assert "      - data/raw            # input datasets\n" in text
    assert "      - tasks/params.py   # schema\n" in text
    assert text.endswith("    params:\n      - seed\n    outs:\n      - data/pulled\n")
    deps = YAML(typ="safe").load(text)["stages"]["pull"]["deps"]
    assert deps == ["data/raw", *stage_code_files("pull")]
    assert write(dvc_yaml) == {} and dvc_yaml.read_text() == text
    assert check(dvc_yaml) == [f"{dvc_yaml}: stages.{s}: missing (tasks/stage_deps.py STAGES has it)"
                               for s in STAGES if s != "pull"]


def _tree(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_closure_follows_imports_inside_functions(tmp_path):
    """Imports inside functions, relative imports, `from pkg import submodule`, importlib with a literal name and
    the __init__ of every package on the way are all found; third-party imports are not project code."""
    _tree(tmp_path, {
        "flows/__init__.py": "",
        "flows/entry.py": "import numpy\n\ndef run():\n    from tasks.helper import go\n    return go()\n",
        "tasks/__init__.py": "",
        "tasks/helper.py": "from . import deep\n\ndef go():\n    import importlib\n"
                           "    return importlib.import_module('explainers.late')\n",
        "tasks/deep.py": "from detection.models import sub\n",
        "explainers/__init__.py": "", "explainers/late.py": "",
        "detection/__init__.py": "", "detection/models/__init__.py": "", "detection/models/sub.py": "",
        "detection/unused.py": "",
    })
    assert module_closure((Entry("flows.entry"),), tmp_path) == {
        "flows", "flows.entry", "tasks", "tasks.helper", "tasks.deep", "explainers", "explainers.late",
        "detection", "detection.models", "detection.models.sub"}


def test_restricted_entry_walks_only_named_functions(tmp_path):
    """The CLI entry: module-level imports and main(), not the other sub-commands' imports."""
    _tree(tmp_path, {
        "flows/__init__.py": "", "flows/a.py": "", "flows/b.py": "", "tasks/__init__.py": "", "tasks/c.py": "",
        "flows/cli.py": "import flows.a\n\ndef other():\n    import flows.b\n\ndef main():\n    import tasks.c\n",
    })
    assert module_closure((Entry("flows.cli", ("main",)),), tmp_path) == {"flows", "flows.cli", "flows.a",
                                                                          "tasks", "tasks.c"}


def test_import_of_no_module_is_an_error(tmp_path):
    _tree(tmp_path, {"flows/__init__.py": "", "flows/x.py": "\n\ndef f():\n    import tasks.gone\n"})
    with pytest.raises(StageDepsError, match=r"flows/x\.py:4: imports 'tasks\.gone', which is no module"):
        module_closure((Entry("flows.x"),), tmp_path)


def test_explain_resume_hash_uses_the_explain_stage_code():
    from tasks.explain import code_files

    assert [p.relative_to(REPO).as_posix() for p in code_files()] == stage_code_files("explain")
    assert "detection/datasets/imageio.py" in stage_code_files("explain")


def test_non_module_files_in_the_packages_are_stage_deps():
    """Every file under the packages that is not Python (configs the code reads) is a dep of some stage."""
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    listed = {f for files in DATA_FILES.values() for f in files}
    assert {f for f in tracked if not f.endswith(".py")} <= listed
    assert all((REPO / f).is_file() for f in listed)


class _FlowStub(types.ModuleType):
    """A flows.<stage> module that records that the CLI used it and returns {} from every flow function."""

    used: set[str] = set()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        _FlowStub.used.add(self.__name__)
        return lambda *args, **kwargs: {}


def test_stage_table_matches_what_each_dvc_cmd_imports(monkeypatch, capsys):
    """STAGES names, for every dvc.yaml stage, exactly the flow modules its `xai-audit ...` command imports (the
    CLI imports them by name, which the static walk cannot see)."""
    import flows.cli

    models_src = ast.parse((REPO / "flows" / "models.py").read_text())
    models = next(ast.literal_eval(n.value) for n in models_src.body
                  if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "MODELS")
    flow_modules = [f"flows.{p.stem}" for p in (REPO / "flows").glob("*.py") if p.stem not in ("__init__", "cli")]
    stages = YAML(typ="safe").load(REPO / "dvc.yaml")["stages"]
    assert set(stages) == set(STAGES)
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        assert argv[0] == "xai-audit", f"stages.{name}.cmd: not an xai-audit command"
        _FlowStub.used = set()
        for module in flow_modules:
            stub = _FlowStub(module)
            if module == "flows.models":
                stub.MODELS = models
            monkeypatch.setitem(sys.modules, module, stub)
        assert flows.cli.main(argv[1:]) == 0
        capsys.readouterr()
        expected = {e.module for e in STAGES[name] if e != CLI}
        assert _FlowStub.used == expected, name


DYNAMIC = """
import importlib, json, sys
packages = {packages!r}
def project():
    return {{m for m in sys.modules if m.split(".")[0] in packages}}
out = {{}}
for module in {modules!r}:
    for m in project():
        del sys.modules[m]
    importlib.import_module(module)
    out[module] = sorted(project())
print(json.dumps(out))
"""


@pytest.mark.slow
def test_static_closure_covers_what_python_imports():
    """What importing each stage's flow module really loads (fresh, in a subprocess) is inside the static closure:
    the walk misses no import that runs at import time."""
    modules = sorted({e.module for entries in STAGES.values() for e in entries})
    proc = subprocess.run([sys.executable, "-c", DYNAMIC.format(packages=PACKAGES, modules=modules)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for module in modules:
        static = module_closure((Entry(module),))
        assert set(loaded[module]) <= static, (module, sorted(set(loaded[module]) - static))


LAZY_PACKAGES = ("explainers", "detection.models", "detection.datasets")


def test_project_code_imports_from_the_defining_submodule():
    """The lazy package roots (PEP 562 ``__getattr__``) import a name's submodule only when the name is accessed,
    which the static walk cannot see: project code must import from the submodule (``from explainers.registry
    import METHODS``), never ``from explainers import METHODS``. Fails naming file and line."""
    import importlib

    bad = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO)
            module = ".".join(rel.with_suffix("").parts)
            is_package = path.name == "__init__.py"
            if is_package:
                module = module.rsplit(".", 1)[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                if node.level:
                    parts = module.split(".") if is_package else module.split(".")[:-1]
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module
                if base not in LAZY_PACKAGES:
                    continue
                for alias in node.names:
                    if not (REPO.joinpath(*base.split("."), f"{alias.name}.py").is_file()
                            or REPO.joinpath(*base.split("."), alias.name, "__init__.py").is_file()):
                        bad.append(f"{rel}:{node.lineno}: from {base} import {alias.name}")
    assert bad == [], "import from the defining submodule instead:\n" + "\n".join(bad)
    for package in LAZY_PACKAGES:                  # the roots really are lazy, and export what __all__ says
        init = ast.parse(REPO.joinpath(*package.split("."), "__init__.py").read_text())
        assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) and getattr(n, "module", None) != "__future__"
                       and not (isinstance(n, ast.Import) and [a.name for a in n.names] == ["importlib"])
                       for n in init.body), package
        mod = importlib.import_module(package)
        assert set(mod._LAZY) == set(mod.__all__), package
        assert all(getattr(mod, name) is getattr(importlib.import_module(mod._LAZY[name]), name)
                   for name in mod.__all__), package


def test_only_stages_that_explain_depend_on_the_explainers():
    """Editing an explainer re-runs explain (and what reads its output), never pull / training / infer / parts."""
    for stage in STAGES:
        files = stage_code_files(stage)
        explainer_files = [f for f in files if f.startswith("explainers/")]
        if stage in ("explain", "guide"):         # guide re-runs the explain flow on the guided classifier
            assert "explainers/registry.py" in files and "tasks/explain_jobs.py" in files, stage
        elif stage == "evaluate":                   # the metrics; report depends on explain's code only via data
            assert "explainers/metrics.py" in files, stage
        elif stage == "models_rexl":                # trains / verifies RExL policies: that explainer only
            assert "explainers/rexl.py" in files and "explainers/registry.py" not in files, stage
        elif stage == "models_fastshap":            # trains / verifies the FastShapParts network: that explainer
            assert "explainers/fastshap.py" in files and "explainers/registry.py" not in files, stage
            assert "tasks/explain_jobs.py" not in files, stage
        elif stage != "report":
            assert explainer_files == [] and "tasks/explain_jobs.py" not in files, (stage, explainer_files)
