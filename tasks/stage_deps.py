"""The code each DVC stage runs, derived from its imports: one source of truth for the code part of every stage's
``deps:`` in dvc.yaml and for the explain stage's resume hash (``tasks.explain.code_files``).

A stage's code is the closure of the *project* modules (packages ``flows``, ``tasks``, ``explainers``,
``detection``) imported by the modules its command runs (:data:`STAGES`): a static walk of every ``import`` /
``from ... import`` statement, inside functions too (they run when the function does), and of
``importlib.import_module("literal")``; importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``.
Files the code reads that are not modules (the YOLO architecture yamls) are listed by hand in
:data:`DATA_FILES`. The over-approximation is deliberate: a module that is imported but does not change a stage's
output costs a re-run; a module that changes it but is missing from ``deps`` silently leaves stale results.

    python -m tasks.stage_deps --check      # exit 1 naming each stage and missing / extra file
    python -m tasks.stage_deps --write      # rewrite the code deps in dvc.yaml (comments and data deps kept)
    python -m tasks.stage_deps --list explain

Only this module's standard-library and ruamel.yaml imports run: it never imports the code it analyses.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("flows", "tasks", "explainers", "detection")
ROOT = Path(__file__).resolve().parents[1]


class StageDepsError(ValueError):
    """An import that names no module, or a dvc.yaml / stage table that does not match; names file and key."""


@dataclass(frozen=True)
class Entry:
    """A module a stage's command runs: all of it (``functions`` None), or its module-level code plus only the named
    functions (the CLI: its other sub-commands' imports are not this stage's)."""

    module: str
    functions: tuple[str, ...] | None = None


CLI = Entry("flows.cli", ("main",))      # every `xai-audit <stage>` command: module level + main()

# dvc.yaml stage -> what its `xai-audit` command runs. flows/cli.py imports the stage's flow module by name
# (importlib, invisible to the walk), so the flow module is named here; tests/test_stage_deps.py checks this table
# against what the CLI really imports for each dvc.yaml cmd.
STAGES: dict[str, tuple[Entry, ...]] = {
    "pull": (CLI, Entry("flows.pull")),
    "train_data": (CLI, Entry("flows.models")),
    "models_pose": (CLI, Entry("flows.models")),
    "models_detector": (CLI, Entry("flows.models")),
    "models_classifier": (CLI, Entry("flows.models")),
    "models_keypoints": (CLI, Entry("flows.models"), Entry("flows.keypoints")),   # _models imports flows.models first
    "models_rexl": (CLI, Entry("flows.rexl")),
    "models_fastshap": (CLI, Entry("flows.fastshap")),
    "infer": (CLI, Entry("flows.infer")),
    "parts": (CLI, Entry("flows.parts")),
    "explain": (CLI, Entry("flows.explain")),
    "evaluate": (CLI, Entry("flows.evaluate")),
    "guide": (CLI, Entry("flows.guide")),
    "report": (CLI, Entry("flows.report")),
}

# Non-module files under the packages that a stage's code reads (params.yaml's default models.*.arch).
DATA_FILES: dict[str, tuple[str, ...]] = {
    "models_pose": ("detection/configs/yolo-pose-tiny.yaml",),
    "models_detector": ("detection/configs/yolo-person-tiny.yaml",),
}


# ------------------------------------------------------------------------------------------------- import walk
def module_file(module: str, root: Path = ROOT) -> Path | None:
    """``a.b`` -> ``root/a/b.py`` or ``root/a/b/__init__.py``; None when neither exists."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def _nodes(tree: ast.Module, functions: tuple[str, ...] | None):
    """Every node of the module, or its module-level code plus the named top-level functions."""
    if functions is None:
        yield from ast.walk(tree)
        return
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name not in functions:
            continue
        yield from ast.walk(stmt)


_CACHE: dict[tuple, frozenset[str]] = {}


def imported_modules(path: Path, module: str, functions: tuple[str, ...] | None = None,
                     root: Path = ROOT) -> frozenset[str]:
    """Project modules the file of ``module`` imports (with the packages whose ``__init__`` each import runs).
    Raises :class:`StageDepsError` naming file and line for a syntax error or a project import of no module.
    Cached per file version (path, size, mtime)."""
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns, module, functions, root)
    if key not in _CACHE:
        _CACHE[key] = frozenset(_imported_modules(path, module, functions, root))
    return _CACHE[key]


def _is_import_module_call(node: ast.AST) -> bool:
    """``importlib.import_module("literal")`` / ``import_module("literal")`` / ``__import__("literal")``."""
    return (isinstance(node, ast.Call) and bool(node.args) and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                 or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))))


def _imports_of(node: ast.AST, module: str, is_package: bool) -> list[tuple[str, tuple[str, ...]]]:
    """The modules one statement imports, each with the names it takes from it (``from a import b``: b may be a
    submodule or an attribute of a)."""
    if isinstance(node, ast.Import):
        return [(alias.name, ()) for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module
        return [(base, tuple(alias.name for alias in node.names if alias.name != "*"))]
    if _is_import_module_call(node):
        return [(node.args[0].value, ())]
    return []


def _imported_modules(path: Path, module: str, functions: tuple[str, ...] | None, root: Path) -> set[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise StageDepsError(f"{path}: cannot parse ({exc})") from None
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def need(name: str, node: ast.AST) -> None:
        if _is_project(name) and module_file(name, root) is None:
            raise StageDepsError(f"{path}:{node.lineno}: imports {name!r}, which is no module under {root}")

    for node in _nodes(tree, functions):
        for name, submodules in _imports_of(node, module, is_package):
            need(name, node)
            found.add(name)
            found.update(f"{name}.{sub}" for sub in submodules if module_file(f"{name}.{sub}", root) is not None)
    with_parents = set()
    for name in found:
        if _is_project(name):
            parts = name.split(".")
            with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in with_parents if module_file(m, root) is not None}


def module_closure(entries: tuple[Entry, ...], root: Path = ROOT) -> set[str]:
    """Every project module that importing / running ``entries`` imports, the entries included."""
    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...] | None]] = []
    for e in entries:
        parts = e.module.split(".")
        seen.update(".".join(parts[:i]) for i in range(1, len(parts)))        # its packages' __init__
        todo.append((e.module, e.functions))
    seen = {m for m in seen if module_file(m, root) is not None}
    todo += [(m, None) for m in seen]
    walked: set[tuple[str, tuple[str, ...] | None]] = set()
    while todo:
        module, functions = todo.pop()
        if (module, functions) in walked or (module, None) in walked:
            continue
        walked.add((module, functions))
        path = module_file(module, root)
        if path is None:
            raise StageDepsError(f"stage entry {module!r}: no module under {root}")
        seen.add(module)
        todo += [(m, None) for m in imported_modules(path, module, functions, root) if (m, None) not in walked]
    return seen


def stage_code_files(stage: str, root: Path = ROOT) -> list[str]:
    """The code deps of a dvc.yaml stage: its modules' files and :data:`DATA_FILES`, posix paths relative to
    ``root``, sorted. Raises :class:`StageDepsError` for a stage missing from :data:`STAGES`."""
    if stage not in STAGES:
        raise StageDepsError(f"stage {stage!r} is not in tasks/stage_deps.py STAGES {sorted(STAGES)}")
    files = {module_file(m, root).relative_to(root).as_posix() for m in module_closure(STAGES[stage], root)}
    return sorted(files | set(DATA_FILES.get(stage, ())))


# ------------------------------------------------------------------------------------------------- dvc.yaml
def is_code_dep(dep: str) -> bool:
    """A dvc.yaml dep inside the project's packages (code, or a file the code reads), not data / models."""
    return Path(dep).parts[0] in PACKAGES if dep else False


def _yaml():
    from ruamel.yaml import YAML

    y = YAML()                                  # round trip: comments, order and flow style survive
    y.indent(mapping=2, sequence=4, offset=2)   # dvc.yaml's layout
    y.width = 4096
    y.preserve_quotes = True
    return y


def _load(dvc_yaml: Path):
    doc = _yaml().load(dvc_yaml)
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), dict):
        raise StageDepsError(f"{dvc_yaml}: no 'stages' mapping")
    return doc


def _stage_deps(dvc_yaml: Path, name: str, stage) -> list[str]:
    deps = stage.get("deps") or []
    bad = [d for d in deps if not isinstance(d, str)]
    if bad:
        raise StageDepsError(f"{dvc_yaml}: stages.{name}.deps: expected paths, got {bad[0]!r}")
    return list(deps)


def check(dvc_yaml: str | Path = ROOT / "dvc.yaml", root: Path = ROOT) -> list[str]:
    """Problems of dvc.yaml's code deps, one line each (empty: every stage lists exactly its code):
    ``stages.<stage>.deps: missing <file> (imported)`` / ``extra <path> (not imported)``, and stages that are in
    dvc.yaml but not in :data:`STAGES` or the reverse."""
    dvc_yaml = Path(dvc_yaml)
    stages = _load(dvc_yaml)["stages"]
    problems = [f"{dvc_yaml}: stages.{s}: no entry in tasks/stage_deps.py STAGES" for s in stages if s not in STAGES]
    problems += [f"{dvc_yaml}: stages.{s}: missing (tasks/stage_deps.py STAGES has it)" for s in STAGES
                 if s not in stages]
    for name, stage in stages.items():
        if name not in STAGES:
            continue
        listed = {d for d in _stage_deps(dvc_yaml, name, stage) if is_code_dep(d)}
        wanted = set(stage_code_files(name, root))
        problems += [f"{dvc_yaml}: stages.{name}.deps: missing {f} (the stage imports / reads it)"
                     for f in sorted(wanted - listed)]
        problems += [f"{dvc_yaml}: stages.{name}.deps: extra {f} (not imported by the stage; list files, not "
                     f"folders)" for f in sorted(listed - wanted)]
    return problems


def write(dvc_yaml: str | Path = ROOT / "dvc.yaml", root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """Rewrite the code part of every stage's ``deps:`` in dvc.yaml: its data deps first, in their order, then its
    code files, sorted. Comments on kept entries, and everything else in the file, are kept. Returns
    {stage: (added, removed)} of the stages that changed. Raises :class:`StageDepsError` for a stage missing from
    :data:`STAGES`."""
    from ruamel.yaml.comments import CommentedSeq

    dvc_yaml = Path(dvc_yaml)
    y = _yaml()
    doc = _load(dvc_yaml)
    changed = {}
    for name, stage in doc["stages"].items():
        old = _stage_deps(dvc_yaml, name, stage)
        code = stage_code_files(name, root)
        new = [d for d in old if not is_code_dep(d)] + code
        if new == old:
            continue
        seq = stage["deps"] if isinstance(stage.get("deps"), CommentedSeq) else CommentedSeq()
        comments = {old[i]: token for i, token in seq.ca.items.items()}
        seq[:] = new
        seq.ca.items.clear()
        for i, dep in enumerate(new):
            if dep in comments:
                seq.ca.items[i] = comments[dep]
        stage["deps"] = seq
        old_code = {d for d in old if is_code_dep(d)}
        changed[name] = (sorted(set(code) - old_code), sorted(old_code - set(code)))
    if changed:
        with open(dvc_yaml, "w", encoding="utf-8") as fh:
            y.dump(doc, fh)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.stage_deps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dvc-yaml", default=str(ROOT / "dvc.yaml"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a stage's code deps differ (default)")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps of every stage")
    mode.add_argument("--list", metavar="STAGE", help="print a stage's code files")
    args = parser.parse_args(argv)
    try:
        if args.list:
            print("\n".join(stage_code_files(args.list)))
            return 0
        if args.write:
            for name, (added, removed) in write(args.dvc_yaml).items():
                print(f"{name}: +{len(added)} -{len(removed)}")
                print("".join(f"  + {f}\n" for f in added) + "".join(f"  - {f}\n" for f in removed), end="")
            return 0
        problems = check(args.dvc_yaml)
    except StageDepsError as exc:
        print(f"stage_deps: error: {exc}", file=sys.stderr)
        return 2
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s); `python -m tasks.stage_deps --write` rewrites the code deps",
              file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
