"""Python blocks: a file with one `@data_loader` / `@transformer` / `@data_exporter` / `@sensor`
function plus optional `@test` functions (Mage's decorators, see `mage_dbt.blocks.decorators`).

The function receives the outputs of the block's declared `upstream:` blocks positionally, in the
declared order (a dbt upstream block gives its relation name, a `Relation` str), and the run
context as keyword arguments, only those its signature names unless it takes `**kwargs`:

    execution_date, interval_start, interval_end   aware datetimes of the run's interval
    full_refresh (bool), vars (dict), run_id (str), logger (logs reach the Prefect task run)
    warehouse    the run's dbt target (`mage_dbt.warehouse`), connected on first use, closed after
    ref, source  dbt relations: ref('model'), source('src', 'table') -> Relation
    data_dir     the project's data folder (pathlib.Path)

Before a run (pipeline load / CLI pre-flight) every file is checked without executing it: it
parses, holds exactly one block function, and that function's signature accepts the upstream
outputs plus the keyword arguments it names. Each `@test` then runs on the output right after the
block: a failing test fails the block, so its downstream blocks are skipped. A `@sensor` is called
until it returns True (block options `poke_interval` seconds, default 10, and `timeout` seconds,
default 600). A block that declares `writes: [schema.table]` or `writes: [source:src.table]` is
upstream of the dbt models reading those tables (see `mage_dbt.blocks.edges`).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mage_dbt.blocks.decorators import BLOCK_KINDS, DECORATORS, KIND_ATTR, TEST_KIND
from mage_dbt.blocks.runners import BlockEnv, BlockOutcome
from mage_dbt.blocks.support import LazyWarehouse, Relation, Relations, block_logger, block_target, detach_logger
from mage_dbt.errors import BlockError

CONTEXT_KWARGS = (
    "execution_date", "interval_start", "interval_end", "full_refresh", "vars", "run_id",
    "logger", "warehouse", "ref", "source", "data_dir",
)


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    kind: str
    line: int
    signature: inspect.Signature


@dataclass(frozen=True)
class PythonBlockInfo:
    path: Path
    main: FunctionInfo
    tests: tuple[FunctionInfo, ...]


def block_file(settings: Any, pipeline_name: str, spec: Any, suffix: str) -> Path:
    """The block's file: `file:` relative to the project root, default flows/<pipeline>/<name><suffix>."""
    relative = spec.file or f"flows/{pipeline_name}/{spec.name}{suffix}"
    path = (Path(settings.root) / relative).resolve()
    if not path.is_file():
        raise BlockError(f"block '{spec.name}': file {relative} does not exist",
                         hint=f"create it or fix `file:` of block '{spec.name}' in flows/{pipeline_name}.yaml")
    return path


def where(settings: Any, spec: Any, path: Path, line: int | None = None) -> str:
    """`block 'x' (flows/demo/x.py:12)`: how every error names a block and its file."""
    try:
        shown = path.relative_to(Path(settings.root).resolve())
    except ValueError:
        shown = path
    return f"block '{spec.name}' ({shown}{f':{line}' if line else ''})"


# -- static checks (no execution) -------------------------------------------------------------------
def analyse_python_file(path: Path, label: Callable[[int | None], str]) -> PythonBlockInfo:
    """Find the block function and tests of a file by reading it (nothing is executed)."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise BlockError(f"{label(exc.lineno)}: Python syntax error at column {exc.offset}: {exc.msg}") from None
    found = [_function_info(fn) for fn in _top_level_functions(tree.body)]
    found = [f for f in found if f is not None]
    mains = [f for f in found if f.kind in BLOCK_KINDS]
    if not mains:
        raise BlockError(f"{label(None)}: no function decorated with "
                         f"{', '.join('@' + k for k in BLOCK_KINDS)}",
                         hint="decorate the function the block runs, e.g. @transformer")
    if len(mains) > 1:
        listed = ", ".join(f"@{f.kind} {f.name} (line {f.line})" for f in mains)
        raise BlockError(f"{label(mains[1].line)}: {len(mains)} decorated block functions: {listed}",
                         hint="a block file holds exactly one; move the others to their own blocks")
    return PythonBlockInfo(path=path, main=mains[0], tests=tuple(f for f in found if f.kind == TEST_KIND))


def _top_level_functions(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for part in ("body", "orelse", "finalbody"):
                yield from _top_level_functions(getattr(node, part, []) or [])
            for handler in getattr(node, "handlers", []) or []:
                yield from _top_level_functions(handler.body)


def _function_info(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> FunctionInfo | None:
    for decorator in fn.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
        if name in BLOCK_KINDS or name == TEST_KIND:
            return FunctionInfo(name=fn.name, kind=name, line=fn.lineno, signature=_signature(fn.args))
    return None


def _signature(args: ast.arguments) -> inspect.Signature:
    P = inspect.Parameter
    params: list[inspect.Parameter] = []
    positional = [(a, P.POSITIONAL_ONLY) for a in args.posonlyargs] + [(a, P.POSITIONAL_OR_KEYWORD) for a in args.args]
    first_default = len(positional) - len(args.defaults)
    for index, (arg, kind) in enumerate(positional):
        params.append(P(arg.arg, kind, default=None if index >= first_default else P.empty))
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        params.append(P(arg.arg, P.KEYWORD_ONLY, default=P.empty if default is None else None))
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(params)


def keyword_names(signature: inspect.Signature, n_positional: int) -> list[str]:
    """The context keyword arguments a call passes: the ones named (all with **kwargs), minus
    parameters already filled by the positional upstream outputs."""
    params = list(signature.parameters.values())
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    taken = set(positional[:n_positional])
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return [k for k in CONTEXT_KWARGS if k not in taken]
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return [k for k in CONTEXT_KWARGS if k in named and k not in taken]


def check_call(signature: inspect.Signature, function: FunctionInfo | str, inputs: list[str],
               label: str, what: str = "upstream block") -> list[str]:
    """Raise BlockError unless `function` accepts `inputs` positionally plus its context
    keywords; return those keyword names."""
    name = function if isinstance(function, str) else function.name
    params = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for param, given in zip(params, inputs):
        if param.name in CONTEXT_KWARGS:
            raise BlockError(f"{label}: parameter '{param.name}' of {name}() would receive the "
                             f"{what} '{given}' instead of the run's {param.name}",
                             hint=f"declare one positional parameter per {what} before the context keywords")
    keywords = keyword_names(signature, len(inputs))
    try:
        signature.bind(*inputs, **{k: None for k in keywords})
    except TypeError as exc:
        shown = ", ".join(inputs) or "none"
        raise BlockError(
            f"{label}: {name}{signature} cannot accept its {len(inputs)} {what} "
            f"input(s) ({shown}): {exc}",
            hint=f"take one positional parameter per {what}, in the declared order (or *args)") from None
    return keywords


def check_python_block(settings: Any, pipeline_name: str, spec: Any) -> PythonBlockInfo:
    """The pre-flight check of one Python block (file, decorated function, signatures)."""
    path = block_file(settings, pipeline_name, spec, ".py")
    info = analyse_python_file(path, lambda line: where(settings, spec, path, line))
    check_call(info.main.signature, info.main, list(spec.upstream), where(settings, spec, path, info.main.line))
    for test in info.tests:
        check_call(test.signature, test, ["output"], where(settings, spec, path, test.line), what="test")
    return info


# -- running -------------------------------------------------------------------------------------------
def load_module(path: Path, label: str) -> dict[str, Any]:
    """Execute the block file with Mage's decorators in its globals; return its namespace."""
    module_name = f"mage_dbt_block_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(DECORATORS)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        line = next((f.lineno for f in reversed(traceback.extract_tb(exc.__traceback__))
                     if f.filename == str(path)), None)
        at = f" at line {line}" if line else ""
        raise BlockError(f"{label}: importing the file failed{at}: {type(exc).__name__}: {exc}") from None
    return vars(module)


def block_functions(namespace: dict[str, Any], label: str) -> tuple[Callable, list[Callable]]:
    """The one block function and the test functions defined in this file."""
    own = [v for v in namespace.values() if callable(v) and getattr(v, KIND_ATTR, None)
           and getattr(v, "__module__", None) == namespace.get("__name__")]
    mains = [f for f in own if getattr(f, KIND_ATTR) in BLOCK_KINDS]
    if len(mains) != 1:
        raise BlockError(f"{label}: expected exactly one decorated block function, found {len(mains)}")
    return mains[0], [f for f in own if getattr(f, KIND_ATTR) == TEST_KIND]


def upstream_value(name: str, env: BlockEnv) -> Any:
    """An upstream output: a dbt block's relation, else the stored output of a Python/SQL block."""
    pipeline = env.pipeline
    block = pipeline.blocks.get(name)
    if block is not None and block.is_dbt_node and pipeline.manifest is not None:
        return Relation.of(pipeline.manifest.nodes[block.unique_id])
    if block is None and name not in env.outputs and pipeline.manifest is not None:
        nodes = [n for n in pipeline.manifest.nodes.values() if n.name == name and n.relation_name]
        if nodes:
            return Relation.of(nodes[0])
    return env.outputs[name]


def context_kwargs(block_name: str, env: BlockEnv, warehouse: Any, relations: Any) -> dict[str, Any]:
    ctx = env.context
    return {
        "execution_date": ctx.execution_date, "interval_start": ctx.interval_start,
        "interval_end": ctx.interval_end, "full_refresh": ctx.full_refresh, "vars": dict(ctx.vars),
        "run_id": ctx.run_id, "logger": block_logger(block_name, env.reporter),
        "warehouse": warehouse, "ref": relations.ref, "source": relations.source,
        "data_dir": Path(env.settings.data_dir),
    }


def run_python_block(block: Any, env: BlockEnv) -> BlockOutcome:
    """Run the block function on its upstream outputs, then its @test functions on the output."""
    spec, settings = block.spec, env.settings
    info = check_python_block(settings, env.pipeline.name, spec)
    label = where(settings, spec, info.path)
    func, tests = block_functions(load_module(info.path, label), label)
    inputs = [upstream_value(name, env) for name in spec.upstream]
    manifest = env.pipeline.manifest
    relations = Relations(manifest.nodes if manifest else None, env.pipeline.dbt_ref.name if env.pipeline.dbt_ref else None)
    warehouse = LazyWarehouse(lambda: block_target(settings, env.pipeline, env.context))
    try:
        available = context_kwargs(block.name, env, warehouse, relations)
        signature = inspect.signature(func)
        keywords = check_call(signature, func.__name__, list(spec.upstream), label)
        call = lambda: func(*inputs, **{k: available[k] for k in keywords})  # noqa: E731
        output = _poke(call, spec, label) if getattr(func, KIND_ATTR) == "sensor" else call()
        for test in tests:
            test_keywords = check_call(inspect.signature(test), test.__name__, ["output"], label, "test")
            try:
                test(output, **{k: available[k] for k in test_keywords})
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
                raise BlockError(f"{label}: @test {test.__name__} failed: {reason}") from None
    finally:
        warehouse.close()
        detach_logger(block.name)
    return BlockOutcome(output=output, rows=_rows(output),
                        message=f"{getattr(func, KIND_ATTR)} {func.__name__}: {_describe(output)}"
                        + (f"; {len(tests)} test(s) passed" if tests else ""))


def _poke(call: Callable[[], Any], spec: Any, label: str) -> Any:
    interval = float(spec.option("poke_interval", 10))
    timeout = float(spec.option("timeout", 600))
    deadline = time.monotonic() + timeout
    while True:
        if call():
            return True
        if time.monotonic() >= deadline:
            raise BlockError(f"{label}: sensor did not return True within {timeout:g}s")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _rows(output: Any) -> int | None:
    if hasattr(output, "num_rows"):
        return int(output.num_rows)
    if hasattr(output, "shape") and hasattr(output, "columns"):
        return int(output.shape[0])
    return None


def _describe(output: Any) -> str:
    rows = _rows(output)
    if rows is not None:
        return f"{type(output).__name__} with {rows} rows"
    return "no output" if output is None else type(output).__name__
