"""How a dbt parse is traced: patches of dbt's var functions and of its Jinja runtime, while it runs.

`tracing()` (hold the dbt lock) installs the patches for one `dbt parse` and records its
`ParseDependencies` (`mage_dbt.dbt.parse_vars`, which owns the traced values and the recorder):
dbt's `var()` / `has_var()` pin values or hand out traced run vars; Jinja calls, filters, tests,
output concatenation and template renders keep traced values traced, check them, or pin them where
dbt keeps the result. Everything is put back when the block ends.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from typing import Any, Iterator

from mage_dbt.dbt.parse_vars import (
    ACTIVE, Recorder, Traced, TracedMethod, TracedText, is_pure, is_traced, lift, plain, pure_call, sink_call,
)

_LOCK = threading.Lock()
# Parse-time functions whose effect is only a log line.
LOG_ONLY = frozenset({"log", "print"})
# Where dbt renders SQL only for its side effects (config/ref/source capture) and drops the text.
DISCARDING_RENDERS = frozenset({"render_with_context", "update_parsed_node_config", "render_test_update",
                                "parse_generic_test"})


def _var_call(original):
    @functools.wraps(original)
    def traced_var(self, var_name, *args, **kwargs):
        recorder = ACTIVE.recorder
        if recorder is None:
            return original(self, var_name, *args, **kwargs)
        recorder.inside_var += 1
        try:
            value = original(self, var_name, *args, **kwargs)
        finally:
            recorder.inside_var -= 1
        cli_vars = getattr(self, "_cli_vars", {}) or {}
        node = getattr(self, "_node", None)
        where = f"{getattr(node, 'resource_type', 'node')} {getattr(node, 'name', '?')}" if node else "dbt_project.yml, profiles or a schema file"
        traceable = type(self).__name__ == "ParseVar" and var_name in recorder.run_vars
        raw = cli_vars.get(var_name)
        if traceable and (var_name not in cli_vars or (isinstance(raw, str) and "{" not in raw)):
            recorder.deps.traced.setdefault(var_name, where)
            return Traced(value, ("var", var_name, var_name in cli_vars, value, where))
        recorder.pin(var_name, cli_vars, f"read by {where}")
        return value
    return traced_var


def _has_var(original):
    @functools.wraps(original)
    def traced_has_var(self, var_name):
        recorder = ACTIVE.recorder
        if recorder is not None and not recorder.inside_var:
            node = getattr(self, "_node", None)
            recorder.pin(var_name, getattr(self, "_cli_vars", {}) or {},
                         f"has_var in {getattr(node, 'name', 'dbt_project.yml')}")
        return original(self, var_name)
    return traced_has_var


def _env_call(original):
    @functools.wraps(original)
    def traced_env_call(self, __context, __obj, *args, **kwargs):
        if ACTIVE.recorder is None or not (is_traced(args) or is_traced(kwargs)):
            return original(self, __context, __obj, *args, **kwargs)
        if _passes_through(__obj):
            return original(self, __context, __obj, *args, **kwargs)
        if getattr(__obj, "__name__", None) in LOG_ONLY and "dbt.context" in str(getattr(__obj, "__module__", "")):
            return original(self, __context, __obj, *(_unchecked(a) for a in args), **kwargs)
        if is_pure(__obj):
            return pure_call(__obj, args, kwargs)
        return sink_call(lambda *a, **k: original(self, __context, __obj, *a, **k), args, kwargs)
    return traced_env_call


def _unchecked(obj: Any) -> Any:
    return lift(obj)[0] if isinstance(obj, (Traced, TracedText)) else obj


def _passes_through(obj: Any) -> bool:
    """Jinja code (macros) and dbt's `return()`: the traced value flows on inside them."""
    if isinstance(obj, TracedMethod):
        return True
    names = {cls.__name__ for cls in type(obj).__mro__}
    if names & {"BaseMacroGenerator", "Macro"}:
        return True
    return getattr(obj, "__name__", None) == "_return"


def _wrap_jinja_function(fn: Any) -> Any:
    from jinja2.utils import _PassArg

    pass_arg = _PassArg.from_obj(fn)
    if getattr(fn, "_mage_dbt_traced", False):
        return fn

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        if ACTIVE.recorder is None or not (is_traced(args) or is_traced(kwargs)):
            return fn(*args, **kwargs)
        if pass_arg is None:
            return pure_call(fn, args, kwargs)
        if pass_arg is _PassArg.context:
            return sink_call(fn, args, kwargs)
        kind = "eval_context" if pass_arg is _PassArg.eval_context else "environment"
        return pure_call(fn, args[1:], kwargs, jinja_arg=(kind, args[0]))

    traced._mage_dbt_traced = True
    return traced


def _environment_init(original):
    @functools.wraps(original)
    def traced_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if ACTIVE.recorder is not None:
            self.filters = {k: _wrap_jinja_function(v) for k, v in self.filters.items()}
            self.tests = {k: _wrap_jinja_function(v) for k, v in self.tests.items()}
    return traced_init


def traced_concat(pieces: Any) -> Any:
    pieces = list(pieces)
    if ACTIVE.recorder is None or not any(isinstance(p, (Traced, TracedText)) for p in pieces):
        return "".join(pieces)
    lifted = [lift(p) for p in pieces]
    return Traced("".join(str(v) for v, _ in lifted), ("concat", tuple(e for _, e in lifted)))


def _str_join(seq: Any) -> Any:
    return traced_concat(str(item) for item in seq)


def _template_render(original):
    @functools.wraps(original)
    def traced_render(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if ACTIVE.recorder is None or not isinstance(result, Traced):
            return result
        if not _discarding_caller():
            plain(result)  # dbt keeps this text: it must not change with the var
        return str(result._value)
    return traced_render


def _discarding_caller() -> bool:
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return False
        if frame.f_code.co_name in DISCARDING_RENDERS and "dbt" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def tracing(run_vars: frozenset[str], enabled: bool = True) -> Iterator[Recorder]:
    """Record the parse dependencies of the dbt parse run inside this block (hold the dbt lock)."""
    import jinja2.runtime
    from dbt.context.base import Var
    from dbt.context.configured import ConfiguredVar
    from dbt_common.clients import jinja as dbt_jinja

    recorder = Recorder(run_vars if enabled else frozenset())
    patches = [
        (Var, "__call__", _var_call(Var.__call__)),
        (Var, "has_var", _has_var(Var.has_var)),
        (ConfiguredVar, "__call__", _var_call(ConfiguredVar.__call__)),
    ]
    if enabled:
        env_cls = dbt_jinja.MacroFuzzEnvironment
        patches += [
            (env_cls, "call", _env_call(env_cls.call)),
            (env_cls, "__init__", _environment_init(env_cls.__init__)),
            (env_cls, "concat", staticmethod(traced_concat)),
            (dbt_jinja.MacroFuzzTemplate, "render", _template_render(dbt_jinja.MacroFuzzTemplate.render)),
            (jinja2.runtime, "str_join", _str_join),
            (jinja2.runtime, "markup_join", _str_join),
        ]
    with _LOCK:
        saved = [(owner, name, owner.__dict__.get(name, _MISSING)) for owner, name, _ in patches]
        for owner, name, value in patches:
            setattr(owner, name, value)
        dbt_jinja.template_cache.clear()  # macros compiled before would bypass the traced runtime
        ACTIVE.recorder = recorder
        try:
            yield recorder
        finally:
            ACTIVE.recorder = None
            for owner, name, value in saved:
                if value is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, value)
            dbt_jinja.template_cache.clear()


_MISSING = object()
