"""Which of a run's dbt vars a parsed manifest depends on, learned while dbt parses.

dbt renders every model's SQL while it parses, so a var used in SQL is read at parse time even
when only the compiled SQL depends on it. What the manifest holds (which nodes exist, their
config, refs, sources, macro calls) depends on a var only where the value decides control flow
or reaches a dbt function such as `config()` or `ref()`. Parse-once caches one manifest per
*parse dependencies*, recorded by `tracing()` around `dbt parse`:

- **Pinned vars.** Any var read at parse time outside the traced case below (dbt_project.yml,
  profiles, schema files, `has_var`, or any var that is not a run var) pins its value, or its
  absence: the manifest serves only runs with the same value.
- **Traced run vars** (`execution_date`, `interval_start`, ...: the values that change on every
  run of a backfill). Read by model, test, snapshot or macro SQL they come back wrapped
  (`Traced`); every operation on them builds an expression. Where a traced value decides a
  branch (`if`, comparisons, `in`, loops), or reaches a function that is not a known pure one
  (`config`, `ref`, `log` excepted), the expression and its outcome become a *check*. A run with
  another date reuses the manifest when every check replays to the same outcome for its values
  (microseconds); otherwise dbt parses again. Output into the rendered SQL, which dbt discards
  while parsing, needs no check.
- **When in doubt, pin.** Anything the tracer cannot follow (a traced value escaping into the
  manifest, a render whose result dbt keeps, a failing traced parse, checks that cannot be
  stored) pins the run vars instead, so the answer is always dbt's own.
"""

from __future__ import annotations

import json
import operator
import pickle
from dataclasses import dataclass, field
from typing import Any, Mapping

UNSET = "<unset>"

# Functions and methods whose result depends only on their arguments: traced through, not checked.
PURE_MODULES = frozenset({"re", "datetime", "_strptime", "math", "pytz", "jinja2.filters", "jinja2.tests",
                          "markupsafe"})
PURE_BUILTINS = frozenset({str, int, float, bool, len, list, tuple, min, max, abs, round, sorted, range,
                           repr, format})
PURE_RECEIVERS = (str, int, float, bool, bytes, type(None))


class TraceEscaped(Exception):
    """A traced value reached a place the tracer cannot follow (e.g. the pickled manifest)."""


class Mismatch(Exception):
    """Replaying a check for other var values cannot give the recorded outcome."""


def normalized(value: Any) -> str:
    """A var value as dbt receives it through `--vars` (JSON), as a comparable string."""
    return json.dumps(value, sort_keys=True, default=str)


def as_dbt_sees(values: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(values), default=str))


@dataclass
class ParseDependencies:
    """The vars one parse result depends on: pinned values and replayable checks."""

    pinned: dict[str, str] = field(default_factory=dict)  # name -> normalized value or UNSET
    checks: list[tuple[Any, Any]] = field(default_factory=list)  # (expression, outcome)
    traced: dict[str, str] = field(default_factory=dict)  # run var -> first node that read it
    pinned_by: dict[str, str] = field(default_factory=dict)  # var -> where it was pinned (for the log)

    def mismatch(self, dbt_vars: Mapping[str, Any]) -> str | None:
        """None when this parse is valid for `dbt_vars`, else the var (and node) that differs."""
        values = as_dbt_sees(dbt_vars)
        for name, value in self.pinned.items():
            if (normalized(values[name]) if name in values else UNSET) != value:
                return f"var '{name}' ({self.pinned_by.get(name, 'read at parse time')})"
        for expr, outcome in self.checks:
            try:
                same = _same(evaluate(expr, values), outcome)
            except Exception:  # noqa: BLE001 - any failure to replay means "parse again"
                same = False
            if not same:
                return f"var {', '.join(repr(n) for n in sorted(_leaves(expr)))} (used at parse time by {_origin(expr)})"
        return None

    def key(self) -> str:
        import hashlib

        payload = json.dumps(self.pinned, sort_keys=True).encode() + pickle.dumps(self.checks, protocol=4)
        return hashlib.blake2b(payload, digest_size=8).hexdigest()


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# --- expressions ----------------------------------------------------------------------------------
# ("var", name, present, absent_value, origin) | ("const", v) | ("call", fn, args, kwargs)
# | ("jcall", fn, kind, args, kwargs) | ("method", recv, name, args, kwargs) | ("attr", recv, name)
# | ("concat", parts)

def evaluate(expr: tuple, values: Mapping[str, Any]) -> Any:
    tag = expr[0]
    if tag == "const":
        return expr[1]
    if tag == "var":
        _, name, present, absent_value, _origin = expr
        if (name in values) != present:
            raise Mismatch(name)
        return values[name] if present else absent_value
    if tag == "concat":
        return "".join(str(evaluate(part, values)) for part in expr[1])
    if tag == "attr":
        return getattr(evaluate(expr[1], values), expr[2])
    args = [evaluate(a, values) for a in expr[-2]]
    kwargs = {k: evaluate(v, values) for k, v in expr[-1]}
    if tag == "call":
        return expr[1](*args, **kwargs)
    if tag == "jcall":
        return expr[1](_jinja_arg(expr[2]), *args, **kwargs)
    if tag == "method":
        return getattr(evaluate(expr[1], values), expr[2])(*args, **kwargs)
    raise Mismatch(f"unknown expression {tag}")


def _jinja_arg(kind: str) -> Any:
    import jinja2
    from jinja2.nodes import EvalContext

    env = jinja2.Environment()
    return EvalContext(env) if kind == "eval_context" else env


def _leaves(expr: Any) -> set[str]:
    if isinstance(expr, tuple) and expr and expr[0] == "var":
        return {expr[1]}
    out: set[str] = set()
    if isinstance(expr, (tuple, list)):
        for item in expr:
            out |= _leaves(item)
    return out


def _origin(expr: Any) -> str:
    if isinstance(expr, tuple) and expr and expr[0] == "var":
        return expr[4]
    if isinstance(expr, (tuple, list)):
        for item in expr:
            found = _origin(item)
            if found:
                return found
    return ""


# --- traced values --------------------------------------------------------------------------------

class Traced:
    """A value computed from traced run vars, with the expression that computes it."""

    __slots__ = ("_value", "_expr")

    def __init__(self, value: Any, expr: tuple) -> None:
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_expr", expr)

    # Output into rendered text: traced on through the text (see TracedText, traced_concat).
    def __str__(self) -> str:
        return TracedText(str(self._value), ("call", str, (self._expr,), ()))

    # Branches and comparisons: checks.
    def _check(self, fn: Any, *others: Any) -> Any:
        values, exprs = zip(*(lift(o) for o in (self, *others)))
        outcome = fn(*values)
        _record_check(("call", fn, tuple(exprs), ()), outcome)
        return outcome

    def __bool__(self) -> bool:
        return self._check(bool)

    def __len__(self) -> int:
        return self._check(len)

    def __hash__(self) -> int:
        _record_check(self._expr, self._value)
        return hash(self._value)

    def __iter__(self):
        _record_check(self._expr, self._value)
        return iter(self._value)

    def __contains__(self, item: Any) -> bool:
        return self._check(operator.contains, item)

    def __eq__(self, other: Any) -> bool:  # type: ignore[override]
        return self._check(operator.eq, other)

    def __ne__(self, other: Any) -> bool:  # type: ignore[override]
        return self._check(operator.ne, other)

    def __lt__(self, other: Any) -> bool:
        return self._check(operator.lt, other)

    def __le__(self, other: Any) -> bool:
        return self._check(operator.le, other)

    def __gt__(self, other: Any) -> bool:
        return self._check(operator.gt, other)

    def __ge__(self, other: Any) -> bool:
        return self._check(operator.ge, other)

    def _pin(self, fn: Any, *args: Any) -> Any:
        _record_check(self._expr, self._value)
        return fn(self._value, *args)

    def __int__(self) -> int:
        return self._pin(int)

    def __float__(self) -> float:
        return self._pin(float)

    def __repr__(self) -> str:
        return self._pin(repr)

    def __format__(self, spec: str) -> str:
        return self._pin(format, spec)

    def __reduce_ex__(self, protocol: int):
        raise TraceEscaped("a value computed from a run var reached the parsed manifest")

    def __copy__(self):
        raise TraceEscaped("a value computed from a run var was copied by dbt")

    __deepcopy__ = __copy__

    # Pure operations: traced on.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attribute = getattr(self._value, name)
        if callable(attribute):
            return TracedMethod(self, name)
        return Traced(attribute, ("attr", self._expr, name))

    def __getitem__(self, key: Any) -> Any:
        return pure_call(operator.getitem, (self, key), {})


def _binary(fn: Any, reflected: bool = False):
    def method(self: Traced, other: Any) -> Any:
        return pure_call(fn, (other, self) if reflected else (self, other), {})
    return method


for _name, _fn in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("floordiv", operator.floordiv), ("mod", operator.mod),
                   ("pow", operator.pow)):
    setattr(Traced, f"__{_name}__", _binary(_fn))
    setattr(Traced, f"__r{_name}__", _binary(_fn, reflected=True))
for _name, _fn in (("neg", operator.neg), ("pos", operator.pos), ("abs", operator.abs)):
    setattr(Traced, f"__{_name}__", lambda self, _fn=_fn: pure_call(_fn, (self,), {}))


class TracedText(str):
    """Text rendered from a traced value; lives only in Jinja's output buffers (see traced_concat)."""

    def __new__(cls, text: str, expr: tuple) -> "TracedText":
        obj = super().__new__(cls, text)
        obj.expr = expr
        return obj

    def __reduce_ex__(self, protocol: int):
        raise TraceEscaped("text rendered from a run var reached the parsed manifest")


class TracedMethod:
    """A method of a traced value, called from a template."""

    def __init__(self, receiver: Traced, name: str) -> None:
        self.receiver, self.name = receiver, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        value, expr = lift(self.receiver)
        method = getattr(value, self.name)
        if isinstance(value, PURE_RECEIVERS) or type(value).__module__ in PURE_MODULES:
            vals, exprs, kwvals, kwexprs = _lift_all(args, kwargs)
            return Traced(method(*vals, **kwvals), ("method", expr, self.name, exprs, kwexprs))
        _record_check(expr, value)
        return sink_call(method, args, kwargs)


def lift(obj: Any) -> tuple[Any, tuple]:
    """(plain value, expression) of anything a template passes around."""
    if isinstance(obj, Traced):
        return obj._value, obj._expr
    if isinstance(obj, TracedText):
        return str.__str__(obj), obj.expr
    return obj, ("const", obj)


def _lift_all(args: tuple, kwargs: dict) -> tuple:
    lifted = [lift(a) for a in args]
    kw = {k: lift(v) for k, v in kwargs.items()}
    return ([v for v, _ in lifted], tuple(e for _, e in lifted),
            {k: v for k, (v, _) in kw.items()}, tuple((k, e) for k, (_, e) in kw.items()))


def is_traced(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, (Traced, TracedText)):
        return True
    if depth < 3 and isinstance(obj, (list, tuple, set)):
        return any(is_traced(item, depth + 1) for item in obj)
    if depth < 3 and isinstance(obj, dict):
        return any(is_traced(v, depth + 1) for v in obj.values())
    return False


def plain(obj: Any, depth: int = 0) -> Any:
    """`obj` with every traced value inside replaced by its plain value, each recorded as a check."""
    if isinstance(obj, (Traced, TracedText)):
        value, expr = lift(obj)
        _record_check(expr, value)
        return value
    if depth < 3 and isinstance(obj, (list, tuple)) and is_traced(obj):
        return type(obj)(plain(item, depth + 1) for item in obj)
    if depth < 3 and isinstance(obj, dict) and is_traced(obj):
        return {k: plain(v, depth + 1) for k, v in obj.items()}
    return obj


def sink_call(fn: Any, args: tuple, kwargs: dict) -> Any:
    return fn(*(plain(a) for a in args), **{k: plain(v) for k, v in kwargs.items()})


def pure_call(fn: Any, args: tuple, kwargs: dict, jinja_arg: tuple[str, Any] | None = None) -> Any:
    vals, exprs, kwvals, kwexprs = _lift_all(args, kwargs)
    if jinja_arg is None:
        return Traced(fn(*vals, **kwvals), ("call", fn, exprs, kwexprs))
    kind, arg = jinja_arg
    return Traced(fn(arg, *vals, **kwvals), ("jcall", fn, kind, exprs, kwexprs))


def is_pure(fn: Any) -> bool:
    if fn in PURE_BUILTINS:
        return True
    module = getattr(fn, "__module__", None) or getattr(getattr(fn, "__self__", None), "__module__", None)
    if module in PURE_MODULES:
        return True
    owner = getattr(fn, "__self__", None)
    return owner is not None and isinstance(owner, PURE_RECEIVERS) and not isinstance(owner, type)


def _record_check(expr: tuple, outcome: Any) -> None:
    recorder = ACTIVE.recorder
    if recorder is not None:
        recorder.add_check(expr, outcome)


# --- the recorder ---------------------------------------------------------------------------------

class Recorder:
    def __init__(self, run_vars: frozenset[str]) -> None:
        self.run_vars = run_vars
        self.deps = ParseDependencies()
        self._check_keys: set[Any] = set()
        self.inside_var = 0
        self.gave_up: str | None = None

    def pin(self, name: str, cli_vars: Mapping[str, Any], where: str) -> None:
        if name not in self.deps.pinned:
            self.deps.pinned[name] = normalized(cli_vars[name]) if name in cli_vars else UNSET
            self.deps.pinned_by[name] = where

    def add_check(self, expr: tuple, outcome: Any) -> None:
        try:
            key = pickle.dumps((expr, outcome), protocol=4)
        except Exception as exc:  # noqa: BLE001 - an expression we cannot store: pin instead
            self.give_up(f"cannot store a parse check ({type(exc).__name__})")
            return
        if key not in self._check_keys:
            self._check_keys.add(key)
            self.deps.checks.append((expr, outcome))

    def give_up(self, reason: str) -> None:
        self.gave_up = self.gave_up or reason


class _Active:
    """The recorder of the dbt parse being traced (set by `parse_patches.tracing`), None outside one."""

    recorder: "Recorder | None" = None


ACTIVE = _Active()


def pin_traced(deps: ParseDependencies, dbt_vars: Mapping[str, Any], reason: str) -> ParseDependencies:
    """The conservative form of `deps`: every traced run var pinned, no checks."""
    values = as_dbt_sees(dbt_vars)
    pinned = dict(deps.pinned)
    pinned_by = dict(deps.pinned_by)
    for name in deps.traced:
        pinned.setdefault(name, normalized(values[name]) if name in values else UNSET)
        pinned_by.setdefault(name, reason)
    return ParseDependencies(pinned=pinned, checks=[], traced=dict(deps.traced), pinned_by=pinned_by)
