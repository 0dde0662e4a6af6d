#!/usr/bin/env python3
"""Rewrite references to mage_dbt's old module names to the new ones (scripts/module_map.py).

    python scripts/rewrite_imports.py PATH...       # files or folders; prints the files it changed
    python scripts/rewrite_imports.py --check PATH  # exit 1 if anything would change

Idempotent: a second run changes nothing, so it can be applied to branches made on the old layout
after they are merged. What it rewrites:

- Python import statements: `from mage_dbt.pipeline import load_pipeline`, `import mage_dbt.drift`,
  `from mage_dbt import local_server` (becomes `from mage_dbt.deploy import local_server`), names
  that moved to another module than their module (`from mage_dbt.flows import run_and_report`) —
  one statement per target module, trailing comments kept;
- dotted names everywhere else, in Python and in text files (docs, YAML, Makefile, pyproject):
  patch targets (`"mage_dbt.manifest.load_manifest"`), `module:attr` strings, `python -m` lines,
  docstrings; and paths `mage_dbt/<old>.py`.

Not rewritten: lines that name a logger (`getLogger(`): logger names are user-visible and stay;
lines marked `# rewrite_imports: keep` (an old name on purpose).
`mage_dbt.blocks` / `mage_dbt.deploy` were modules and are packages now; a bare reference to them
(no attribute after it) outside an import statement is ambiguous and left alone.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from module_map import MODULES, NEW_SUBMODULES, SYMBOLS  # noqa: E402

TEXT_SUFFIXES = {".py", ".md", ".rst", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".mk", ".j2", ".sh",
                 ".json", ".sql"}
TEXT_NAMES = {"Makefile"}
SKIP_DIRS = {".git", ".venv", "__pycache__", "target", "dbt_packages", "logs", ".mage_dbt", "node_modules",
             ".pytest_prefect", "mage_dbt.egg-info"}
SELF = {Path(__file__).resolve(), (Path(__file__).resolve().parent / "module_map.py")}
DOTTED = re.compile(r"(?<![\w./-])mage_dbt(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")
PATH = re.compile(r"(?<![\w./-])mage_dbt/([A-Za-z_]\w*)\.py\b")
LINE_LIMIT = 118
KEEP = "rewrite_imports: keep"  # a line with this comment names an old module on purpose


# ---------------------------------------------------------------- names


def new_module(module: str) -> str:
    """`module` (a dotted module path, possibly below an old module) under its new name."""
    parts = module.split(".")
    for i in range(len(parts), 1, -1):
        old = ".".join(parts[:i])
        if old not in MODULES:
            continue
        following = parts[i] if i < len(parts) else None
        if following is not None and following in NEW_SUBMODULES.get(old, ()):
            return module  # already new: `mage_dbt.deploy.serve`
        return ".".join([MODULES[old], *parts[i:]])
    return module


def symbol_home(module: str, name: str) -> str:
    return SYMBOLS.get((module, name), module)


def modules_only() -> None:
    """Apply the module renames only (the first restructure commit, before any name moved)."""
    SYMBOLS.clear()


def rewrite_dotted(text: str) -> str:
    """A dotted reference `mage_dbt.a.b[.attr][:attr]` under its new name."""
    chain, _, colon_attr = text.partition(":")
    parts = chain.split(".")
    for i in range(len(parts), 1, -1):
        old = ".".join(parts[:i])
        if old in MODULES:
            following = parts[i] if i < len(parts) else (colon_attr or None)
            if old in NEW_SUBMODULES:
                if following is None or following in NEW_SUBMODULES[old]:
                    break  # bare (ambiguous) or already new
            parts = [*MODULES[old].split("."), *parts[i:]]
            break
    # a moved name: the longest module prefix that has it
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        name = parts[i]
        if (module, name) in SYMBOLS:
            parts = [*SYMBOLS[(module, name)].split("."), *parts[i:]]
            break
    else:
        if colon_attr and (".".join(parts), colon_attr) in SYMBOLS:
            parts = SYMBOLS[(".".join(parts), colon_attr)].split(".")
    return ".".join(parts) + (f":{colon_attr}" if colon_attr else "")


def rewrite_path(match: re.Match) -> str:
    old = f"mage_dbt.{match.group(1)}"
    if old not in MODULES:
        return match.group(0)
    return MODULES[old].replace(".", "/") + ".py"


def rewrite_text(text: str) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        if "mage_dbt" in line and "getLogger(" not in line and KEEP not in line:
            line = DOTTED.sub(lambda m: rewrite_dotted(m.group(0)), line)
            line = PATH.sub(rewrite_path, line)
        out.append(line)
    return "".join(out)


# ---------------------------------------------------------------- Python import statements


def _alias(name: str, asname: str | None) -> str:
    return f"{name} as {asname}" if asname and asname != name else name


def _format_from(indent: str, module: str, names: list[str], comment: str) -> str:
    one = f"{indent}from {module} import {', '.join(names)}{comment}"
    if len(one) <= LINE_LIMIT:
        return one
    lines, current = [f"{indent}from {module} import ({comment}"], indent + "   "
    for name in names:
        piece = f" {name},"
        if len(current) + len(piece) > LINE_LIMIT and current.strip():
            lines.append(current)
            current = indent + "   "
        current += piece
    lines.append(current)
    lines.append(f"{indent})")
    return "\n".join(lines)


def _from_targets(node: ast.ImportFrom) -> list[tuple[str, list[str]]] | None:
    """(module, names) per statement for `node`, or None when it stays as it is."""
    module = node.module or ""
    if node.level or not (module == "mage_dbt" or module.startswith("mage_dbt.")):
        return None
    groups: dict[str, list[str]] = {}
    if module == "mage_dbt":
        for alias in node.names:
            full = new_module(f"mage_dbt.{alias.name}")
            if full == f"mage_dbt.{alias.name}":
                groups.setdefault("mage_dbt", []).append(_alias(alias.name, alias.asname))
            else:
                parent, _, leaf = full.rpartition(".")
                groups.setdefault(parent, []).append(_alias(leaf, alias.asname or alias.name))
    else:
        submodules = NEW_SUBMODULES.get(module)
        if submodules is not None and all(a.name in submodules for a in node.names):
            target = module  # `from mage_dbt.deploy import serve`: new already
        else:
            target = new_module(module)
        for alias in node.names:
            home = symbol_home(target, alias.name)
            groups.setdefault(home, []).append(_alias(alias.name, alias.asname))
    original = [(module, [_alias(a.name, a.asname) for a in node.names])]
    result = list(groups.items())
    return None if result == original else result


def _import_targets(node: ast.Import) -> list[str] | None:
    names = []
    changed = False
    for alias in node.names:
        name = alias.name
        if name.startswith("mage_dbt."):
            new = new_module(name)
            changed |= new != name
            name = new
        names.append(_alias(name, alias.asname))
    return names if changed else None


def rewrite_python(source: str) -> str:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return rewrite_text(source)
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []  # (first line index, last line index, replacement)
    spans: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        first, last = node.lineno - 1, node.end_lineno - 1
        spans.update(range(first, last + 1))
        if isinstance(node, ast.ImportFrom):
            targets = _from_targets(node)
        else:
            targets = _import_targets(node)
        if targets is None:
            continue
        head, tail = lines[first][: node.col_offset], lines[last][node.end_col_offset:]
        if head.strip() or tail.strip().startswith(";"):
            continue  # shares its line with other code: leave it to a human
        comment = tail.rstrip("\r\n")
        comment = ("  " + comment.strip()) if comment.strip() else ""
        ending = "\n" if lines[last].endswith("\n") else ""
        if isinstance(node, ast.ImportFrom):
            text = "\n".join(_format_from(head, m, names, comment) for m, names in targets)
        else:
            text = f"{head}import {', '.join(targets)}{comment}"
        edits.append((first, last, text + ending))
    for first, last, text in sorted(edits, reverse=True):
        lines[first:last + 1] = [text]
    # Everything outside import statements: dotted names in strings, comments, docstrings.
    spans_after: set[int] = set()
    if edits:
        lines = "".join(lines).splitlines(keepends=True)
        tree = ast.parse("".join(lines))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                spans_after.update(range(node.lineno - 1, node.end_lineno))
    else:
        spans_after = spans
    return "".join(line if i in spans_after else rewrite_text(line) for i, line in enumerate(lines))


# ---------------------------------------------------------------- files


def iter_files(paths: list[str]):
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            yield path
            continue
        for child in sorted(path.rglob("*")):
            if any(part in SKIP_DIRS for part in child.parts) or not child.is_file():
                continue
            if child.suffix in TEXT_SUFFIXES or child.name in TEXT_NAMES:
                yield child


def rewrite_file(path: Path) -> str | None:
    """The rewritten text of `path`, or None when nothing changes."""
    if path.resolve() in SELF:
        return None
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return None
    if "mage_dbt" not in text:
        return None
    new = rewrite_python(text) if path.suffix == ".py" else rewrite_text(text)
    return None if new == text else new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    parser.add_argument("--modules-only", action="store_true", help="rename modules, leave moved names alone")
    args = parser.parse_args(argv)
    if args.modules_only:
        modules_only()
    changed = 0
    for path in iter_files(args.paths):
        new = rewrite_file(path)
        if new is None:
            continue
        changed += 1
        print(path)
        if not args.check:
            path.write_text(new)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
