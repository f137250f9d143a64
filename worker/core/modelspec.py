"""Safe parser: a text spec such as ``"preprocessing.StandardScaler | linear_model.Perceptron"``
becomes a fresh river object.

Why: model and detector specs arrive from the CLI, the TOML config and the environment,
i.e. from outside the process. They are therefore never given to ``eval``/``exec``
and never resolved with ``getattr`` on arbitrary names. The spec is parsed with
``ast.parse(mode="eval")`` and only a whitelist of node types is walked:

* ``module.Class`` or ``module.sub.Class``, where ``module`` is a river submodule
  (``preprocessing``, ``linear_model``, ``optim.losses``, ``drift.binary``, ...). The class
  is looked up in that module's namespace and must be a public river class. The ``river.``
  prefix is refused (one canonical spelling per model): write ``linear_model.X``, not
  ``river.linear_model.X``.
* A bare ``module.Class`` means ``module.Class()``.
* ``a | b`` builds a pipeline and ``a + b`` a union, exactly as the same operators do on
  river objects in Python (``+`` binds tighter than ``|``); parentheses group.
* Arguments, positional or keyword, are literals: ints, floats (``-1e-3``), strings,
  ``True``/``False``/``None``, lists and tuples of these, the types ``str``, ``int``,
  ``float`` and ``bool``, and nested river objects (``optimizer=optim.SGD(0.01)``).

Everything else (lambdas, subscripts, comprehensions, f-strings, ``**``, names starting with
``_``, calls on anything but a river class) raises `SpecError`, quoting the offending part and
its 1-based column. Specs are one expression; to spread one over several lines, wrap it in
parentheses as in Python.

>>> from worker.core.modelspec import parse_detector, parse_model
>>> model = parse_model("preprocessing.StandardScaler | linear_model.LogisticRegression(l2=0.001)")
>>> print(model)
StandardScaler | LogisticRegression
>>> parse_model("linear_model.LinearRegression(optimizer=optim.SGD(0.01), l2=0.0)").l2
0.0

Events with both numeric and string features: scale the numbers, one-hot encode the strings.
``bool`` is a subclass of ``int`` in Python, so boolean features land in the numeric branch
(as 0/1); an integer that is really a category (a zip code) must be sent as a string.

>>> model = parse_model(
...     "(compose.SelectType(float, int) | preprocessing.StandardScaler)"
...     " + (compose.SelectType(str) | preprocessing.OneHotEncoder)"
...     " | linear_model.LogisticRegression"
... )
>>> model.learn_one({"amount": 12.5, "country": "FR"}, True)
>>> model.learn_one({"amount": 3.0, "country": "DE"}, False)
>>> proba = model.predict_proba_one({"amount": 12.5, "country": "FR"})
>>> proba[True] > 0.5
True

Note: in river 0.26.1, ``repr()`` of ``compose.SelectType`` with two or more types raises
``TypeError`` (it sorts the types); ``str()`` works, so log models with ``str()``.

>>> detector = parse_detector("drift.ADWIN(delta=0.002)")
>>> detector.update(0.5)
>>> detector.drift_detected
False
>>> parse_detector("binary.DDM(drift_threshold=2.5)").drift_threshold
2.5
>>> parse_model("__import__('os').system('id')")
Traceback (most recent call last):
...
worker.errors.SpecError: invalid model spec at column 1: "__import__" — names starting with \
'_' are not allowed
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
from types import ModuleType
from typing import Any

from river import base, compose

from worker.errors import SpecError

__all__ = ["MAX_SPEC_LENGTH", "parse_detector", "parse_model", "validate_detector", "validate_model"]

MAX_SPEC_LENGTH = 2000

_TYPE_NAMES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
_ESTIMATOR = (base.Estimator,)
_DETECTOR = (base.DriftDetector, base.BinaryDriftDetector)
_NESTED = (base.Base,)  # optimizers, losses, stats, detectors, estimators
_WHAT = {_ESTIMATOR: "a river estimator", _DETECTOR: "a river drift detector"}

_ALLOWED_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.Call,
    ast.keyword,
    ast.Attribute,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.UnaryOp,
    ast.BitOr,
    ast.Add,
    ast.USub,
    ast.UAdd,
)
_REASONS: dict[type, str] = {
    ast.Lambda: "lambdas are not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed",
    ast.Starred: "*args are not allowed",
}
_OPERATORS = (ast.BitOr, ast.Add)  # pipeline, union


def parse_model(spec: str) -> base.Estimator:
    """Build a new river estimator (model, pipeline or union) from ``spec``."""
    return _Builder(spec, "model").build(_ESTIMATOR)


def parse_detector(spec: str) -> base.DriftDetector | base.BinaryDriftDetector:
    """Build a new drift detector from ``spec``: ``drift.ADWIN``, ``drift.binary.DDM()``.

    The ``drift.`` prefix may be left out: ``ADWIN(delta=0.01)``, ``binary.DDM``.
    """
    return _Builder(spec, "detector").build(_DETECTOR)


def validate_detector(spec: str) -> None:
    """Raise `SpecError` unless ``spec`` builds a drift detector that takes 0/1 losses.

    Arguments river accepts can still fail on the first update (``ADWIN(clock=0)``
    panics in river's Rust code, an exception that is not an ``Exception``): a detector
    is tried on a short stream here, at start, rather than on the first labelled event.
    (Rust prints its panic message on stderr first: a line or two before the error.)
    """
    detector = parse_detector(spec)
    try:
        for loss in (0, 1) * 64:
            detector.update(loss)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
        raise SpecError(f"invalid detector spec: {spec!r} fails on its first updates "
                        f"({type(exc).__name__}: {exc})") from None


def validate_model(spec: str) -> None:
    """Raise `SpecError` unless ``spec`` builds a river classifier (or a pipeline ending in
    one): the worker serves classes and their probabilities and scores them with accuracy,
    F1 and log-loss, so a regressor or a bare transformer is refused at start rather than
    dead-lettering every event."""
    last = parse_model(spec)
    while isinstance(last, compose.Pipeline):
        last = list(last.steps.values())[-1]
    if not isinstance(last, base.Classifier):
        raise SpecError(f"invalid model spec: {spec!r} is not a classifier ({type(last).__name__} "
                        "predicts no class); the worker serves classifiers")


class _Builder:
    """Walks one parsed spec; every refusal goes through `fail` so it quotes the source."""

    def __init__(self, spec: str, kind: str) -> None:
        if not isinstance(spec, str):
            raise SpecError(f"invalid {kind} spec: expected a string, got {type(spec).__name__}")
        self.spec = spec.strip()
        self.kind = kind

    def build(self, allowed: tuple[type, ...]) -> Any:
        tree = self._parse()
        for node in ast.walk(tree):
            self._check_node(node)
        try:
            return self._obj(tree.body, allowed)
        except RecursionError:
            raise SpecError(f"invalid {self.kind} spec: too deeply nested") from None

    def fail(self, node: ast.AST, reason: str) -> SpecError:
        segment = ast.get_source_segment(self.spec, node) or ""
        if len(segment) > 80:
            segment = segment[:77] + "..."
        line = self.spec.splitlines()[node.lineno - 1]
        col = len(line.encode()[: node.col_offset].decode(errors="ignore")) + 1
        where = f"column {col}" if node.lineno == 1 else f"line {node.lineno}, column {col}"
        return SpecError(f'invalid {self.kind} spec at {where}: "{segment}" — {reason}')

    def _parse(self) -> ast.Expression:
        if not self.spec:
            raise SpecError(f"invalid {self.kind} spec: empty")
        if len(self.spec) > MAX_SPEC_LENGTH:
            raise SpecError(f"invalid {self.kind} spec: {len(self.spec)} characters (max {MAX_SPEC_LENGTH})")
        try:
            return ast.parse(self.spec, mode="eval")
        except SyntaxError as exc:
            where = f" at column {exc.offset}" if exc.offset else ""
            if exc.offset and (exc.lineno or 1) > 1:
                where = f" at line {exc.lineno}, column {exc.offset}"
            raise SpecError(f"invalid {self.kind} spec{where}: {exc.msg}") from None
        except (ValueError, RecursionError, MemoryError) as exc:
            raise SpecError(f"invalid {self.kind} spec: {exc}") from None

    def _check_node(self, node: ast.AST) -> None:
        """Whitelist pass over every node, before anything is imported or built."""
        if isinstance(node, ast.keyword) and node.arg is None:
            raise self.fail(node, "**kwargs are not allowed")
        if _identifier(node).startswith("_"):
            raise self.fail(node, "names starting with '_' are not allowed")
        if isinstance(node, ast.BinOp) and not isinstance(node.op, _OPERATORS):
            raise self.fail(node, "only '|' (pipeline) and '+' (union) are allowed")
        elif isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.USub | ast.UAdd):
            raise self.fail(node, "only '-' and '+' signs on numbers are allowed")
        elif not isinstance(node, _ALLOWED_NODES):
            reason = _REASONS.get(type(node), f"{type(node).__name__} is not allowed")
            raise self.fail(node, reason)

    def _obj(self, node: ast.expr, allowed: tuple[type, ...]) -> Any:
        """Build a river object: ``a | b``, ``a + b``, ``module.Class(...)`` or ``module.Class``."""
        if isinstance(node, ast.BinOp):
            if not issubclass(base.Estimator, allowed):
                raise self.fail(node, f"'|' and '+' combine estimators, not {self.kind}s")
            left, right = self._obj(node.left, _ESTIMATOR), self._obj(node.right, _ESTIMATOR)
            try:
                built = left | right if isinstance(node.op, ast.BitOr) else left + right
            except Exception as exc:
                raise self.fail(node, f"cannot combine: {exc}") from exc
            if not isinstance(built, allowed):
                raise self.fail(node, f"is not {_WHAT.get(allowed, 'a river object')}")
            return built
        if isinstance(node, ast.Call):
            cls = self._class(node.func, allowed)
            args = [self._value(arg) for arg in node.args]
            kwargs = {}
            for kw in node.keywords:
                if kw.arg in kwargs:
                    raise self.fail(kw, f"{kw.arg} is given twice")
                kwargs[kw.arg] = self._value(kw.value)
            return self._instantiate(node, cls, args, kwargs)
        if isinstance(node, ast.Attribute | ast.Name):
            return self._instantiate(node, self._class(node, allowed), [], {})
        raise self.fail(node, f"expected {_WHAT.get(allowed, 'a river object')}")

    def _value(self, node: ast.expr) -> Any:
        """Build an argument: a literal, a list/tuple of them, a type name or a river object."""
        if isinstance(node, ast.Constant):
            return self._constant(node, node.value)
        if isinstance(node, ast.UnaryOp):
            operand = node.operand
            if not isinstance(operand, ast.Constant) or type(operand.value) not in (int, float):
                raise self.fail(node, "a sign must be followed by a number")
            value = self._constant(node, operand.value)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.List | ast.Tuple):
            items = [self._value(elt) for elt in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Name) and node.id in _TYPE_NAMES:
            return _TYPE_NAMES[node.id]
        if isinstance(node, ast.Name):
            raise self.fail(node, f"unknown name (allowed bare names: {', '.join(_TYPE_NAMES)})")
        return self._obj(node, _NESTED)

    def _constant(self, node: ast.expr, value: Any) -> Any:
        if value is None or type(value) in (bool, int, str):
            return value
        if type(value) is float:
            if not math.isfinite(value):
                raise self.fail(node, "number is not finite")
            return value
        raise self.fail(node, f"{type(value).__name__} literals are not allowed")

    def _class(self, node: ast.expr, allowed: tuple[type, ...]) -> type:
        """Resolve ``module[.sub].Class`` through river submodules only; no getattr."""
        parts = self._dotted(node)
        if parts[0] == "river":
            hint = ".".join(parts[1:]) or "module.Class"
            raise self.fail(node, f'drop the "river." prefix: write "{hint}"')
        if self.kind == "detector" and (len(parts) == 1 or parts[0] == "binary"):
            parts = ["drift", *parts]
        if len(parts) < 2:
            raise self.fail(node, "write river classes as module.Class")
        module = self._module(node, parts[:-1])
        cls = vars(module).get(parts[-1])
        dotted = ".".join(parts)
        if cls is None:
            raise self.fail(node, f"river has no {dotted}")
        if not (inspect.isclass(cls) and cls.__module__.startswith("river.")):
            raise self.fail(node, f"{dotted} is not a river class")
        if not issubclass(cls, allowed):
            raise self.fail(node, f"{dotted} is not {_WHAT.get(allowed, 'a river object')}")
        return cls

    def _dotted(self, node: ast.expr) -> list[str]:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise self.fail(node, "only river classes can be called or have attributes")
        return [node.id, *reversed(parts)]

    def _module(self, node: ast.expr, parts: list[str]) -> ModuleType:
        try:
            module = importlib.import_module(f"river.{parts[0]}")
        except ImportError:
            raise self.fail(node, f"river has no module {parts[0]!r}") from None
        for part in parts[1:]:
            sub = vars(module).get(part)
            if not (inspect.ismodule(sub) and sub.__name__ == f"{module.__name__}.{part}"):
                raise self.fail(node, f"river has no module {'.'.join(parts)!r}")
            module = sub
        return module

    def _instantiate(self, node: ast.expr, cls: type, args: list, kwargs: dict) -> Any:
        try:
            return cls(*args, **kwargs)
        except Exception as exc:
            raise self.fail(node, f"cannot build {cls.__name__}: {exc}") from exc


def _identifier(node: ast.AST) -> str:
    """The name a node introduces (``x``, ``.x``, ``x=``), or ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.keyword):
        return node.arg or ""
    return ""
