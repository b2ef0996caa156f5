"""The import graph keeps its shape: the domain imports nothing of ours, the pure planner no storage, and the
entry points (web, cli, scheduler, demo) no ``db`` module. Every import counts, also one inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "tracker"

# (modules the rule covers, prefixes they must not import, why)
RULES: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("tracker.domain",), ("tracker",), "the domain is pure: it imports nothing of ours but itself"),
    (("tracker.transitions.plans",), ("tracker.db", "tracker.alerts", "sqlalchemy", "tracker.inbox"),
     "plans are pure: no storage"),
    (("tracker.web", "tracker.cli", "tracker.scheduler", "tracker.demo"), ("tracker.db",),
     "entry points call application steps, never db"),
]
ALLOWED_WITHIN = {"tracker.domain": "tracker.domain"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[:len(anchor) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _covered(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        for covered, forbidden, why in RULES:
            if not _covered(name, covered):
                continue
            own = next((ALLOWED_WITHIN[c] for c in covered if c in ALLOWED_WITHIN), None)
            for imported in sorted(imports_of(path, name)):
                if _covered(imported, forbidden) and not (own and _covered(imported, (own,))):
                    problems.append(f"{name} imports {imported}: {why}")
    return problems


def test_the_import_graph_keeps_its_shape() -> None:
    assert violations(ROOT) == []


def test_the_check_catches_each_kind_of_break(tmp_path: Path) -> None:
    tree = tmp_path / "tracker"
    for folder in ("domain", "web", "transitions", "db"):
        (tree / folder).mkdir(parents=True)
        (tree / folder / "__init__.py").write_text("")
    (tree / "domain" / "rules.py").write_text("from tracker.clock import Clock\nfrom . import other\n")
    (tree / "web" / "page.py").write_text("def handler():\n    from tracker.db import queries\n")
    (tree / "transitions" / "plans.py").write_text("import sqlalchemy\n")
    (tree / "cli.py").write_text("from .db.engine import make_engine\n")
    assert violations(tree) == [
        "tracker.cli imports tracker.db.engine: entry points call application steps, never db",
        "tracker.cli imports tracker.db.engine.make_engine: entry points call application steps, never db",
        "tracker.domain.rules imports tracker.clock: the domain is pure: it imports nothing of ours but itself",
        "tracker.domain.rules imports tracker.clock.Clock: the domain is pure: it imports nothing of ours but itself",
        "tracker.transitions.plans imports sqlalchemy: plans are pure: no storage",
        "tracker.web.page imports tracker.db: entry points call application steps, never db",
        "tracker.web.page imports tracker.db.queries: entry points call application steps, never db",
    ]
