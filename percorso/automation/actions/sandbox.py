"""The sandbox email templates render in, and the budget that bounds what one render may cost.

Jinja's own sandbox keeps templates away from Python internals; it does not bound the work a
template asks for. An editor could write ``{{ 'a' * 10**9 }}`` (which Jinja would even compute
while compiling), a ``'%0999999999d'`` format, or loops inside loops. Here:

* ``*``, ``**``, ``%`` and ``+`` go through :meth:`EmailSandbox.call_binop`, which refuses a
  result larger than :data:`MAX_VALUE_CHARS` before computing it (and, being intercepted, they
  are never computed at compile time);
* every call, filter and loop iteration counts against :data:`MAX_STEPS` and
  :data:`MAX_RENDER_SECONDS`, every piece of output (also what a macro, ``set`` block or
  ``filter`` block collects) against :data:`MAX_OUTPUT_CHARS`;
* calls and filters that pad or repeat (``center``, ``ljust``, ``join``, ``replace``, formats
  with huge widths) are checked before they run; lists and dicts cannot be changed in place;
* a list or dict counts by the text it holds (:func:`text_size`), so ``[x, x, x]`` or
  ``[x] * n`` of a long ``x`` is as large as its ``str()`` or ``tojson`` would be.

A render that goes over raises :class:`RenderLimit`. Use :func:`rendering` around a render.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextvars import ContextVar
from types import BuiltinMethodType
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.runtime import Context, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

MAX_SOURCE_CHARS = 200_000  # per template (subject, text or html)
MAX_VALUE_CHARS = 1_000_000  # any one string, list or number (in digits) a template builds
MAX_OUTPUT_CHARS = 2_000_000  # all output of one render, including what blocks collect
MAX_STEPS = 1_000_000  # loop iterations, calls and filters in one render
MAX_RENDER_SECONDS = 0.5  # per part; an ordinary email renders in about a millisecond
MAX_MACRO_DEPTH = 100  # macros calling macros: a bound found at once, however fast the machine
_MAX_INT_BITS = int(MAX_VALUE_CHARS * 3.33)  # about MAX_VALUE_CHARS decimal digits

_STEP = "percorso_step"
_OUTPUT = "percorso_output"
_VALUE = "percorso_value"


class RenderLimit(Exception):
    """A template asked for more than one email may cost; the message says what."""


class _Budget:
    __slots__ = ("deadline", "depth", "output", "steps")

    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS
        self.steps = 0
        self.output = 0
        self.depth = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise RenderLimit(f"it takes more than {MAX_STEPS:,} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise RenderLimit(f"it takes longer than {MAX_RENDER_SECONDS:g} s to render")

    def produce(self, chars: int) -> None:
        self.output += chars
        if self.output > MAX_OUTPUT_CHARS:
            raise RenderLimit(f"it produces more than {MAX_OUTPUT_CHARS:,} characters")


_budget: ContextVar[_Budget | None] = ContextVar("percorso_template_budget", default=None)


@contextlib.contextmanager
def rendering() -> Iterator[None]:
    """A fresh budget for the renders inside the block (one email part)."""
    token = _budget.set(_Budget())
    try:
        yield
    finally:
        _budget.reset(token)


def _step() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.step()


# -- sizes -----------------------------------------------------------------------------------


def _too_large(what: str) -> RenderLimit:
    return RenderLimit(f"{what} would be larger than {MAX_VALUE_CHARS:,} characters")


_CONTAINERS = (list, tuple, dict, set, frozenset)


def text_size(value: Any, limit: int = MAX_VALUE_CHARS) -> int:
    """About how many characters ``value`` takes as text (``str()``, ``tojson``), counting what
    nested lists and dicts hold; the count stops once past ``limit``. A list that holds one long
    string a million times is a million times that string's length, not a million."""
    total = 0
    pending = [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, str | bytes):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            total += 2 + 2 * len(item)
            pending.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 2
        else:
            total += 24
    return total


def check_size(value: Any) -> Any:
    """``value``, unless it is a string, collection or number larger than a template may build."""
    if isinstance(value, str | bytes):
        if len(value) > MAX_VALUE_CHARS:
            raise _too_large("a value")
    elif isinstance(value, _CONTAINERS):
        if text_size(value) > MAX_VALUE_CHARS:
            raise _too_large("a value")
    elif isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise _too_large("a number")
    return value


def _length(value: Any) -> int:
    """What a repeated value adds per repetition: its characters, or its contents' as text."""
    if isinstance(value, _CONTAINERS):
        return text_size(value)
    return len(value) if isinstance(value, Sized) else 0


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuses ``left <operator> right`` when its result would be too large, without computing it."""
    if operator == "*":
        if _is_count(left) and _is_count(right):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise _too_large("a number")
            return
        count, sequence = (left, right) if _is_count(left) else (right, left)
        if _is_count(count) and _length(sequence) * max(count, 0) > MAX_VALUE_CHARS:
            raise _too_large(f"{type(sequence).__name__} * {count:,}")
    elif operator == "**" and _is_count(left) and _is_count(right):
        if abs(left) > 1 and right > 0 and left.bit_length() * right > _MAX_INT_BITS:
            raise _too_large(f"{left:,} ** {right:,}")
    elif operator == "%" and isinstance(left, str):
        check_format(left, "%")


# A width or precision of seven digits or more, or one taken from the arguments.
_PERCENT_WIDTH = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d{7,}|\d*\.(?:\*|\d{7,}))")
_BRACE_WIDTH = re.compile(r"\{[^{}]*:[^{}]*(?:\{|\d{7,})")


def check_format(template: str, style: str) -> None:
    """Refuses a format string whose fields ask for enormous widths."""
    pattern = _PERCENT_WIDTH if style == "%" else _BRACE_WIDTH
    if pattern.search(template):
        raise RenderLimit(
            "a format with a width or precision of a million or more, or taken from an argument, "
            "is not available in email templates"
        )


def _check_count_arguments(what: str, arguments: Iterable[Any]) -> None:
    for value in arguments:
        if _is_count(value) and abs(value) > MAX_VALUE_CHARS:
            raise _too_large(f"{what}({value:,})")


def _check_join(separator: Any, items: Any) -> None:
    """Refuses a join whose text would be too large: the separators and every item counted, so a
    list holding one long string many times (``['a' * 10**6] * 10**6``) is refused unjoined."""
    count = len(items) if isinstance(items, Sized) else 0
    if (
        _length(separator) * count + (text_size(items) if isinstance(items, _CONTAINERS) else 0)
        > MAX_VALUE_CHARS
    ):
        raise _too_large("the joined text")


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if not isinstance(text, str) or not isinstance(old, str) or not isinstance(new, str):
        return
    times = len(text) + 1 if not old else len(text) // len(old)
    if times * len(new) > MAX_VALUE_CHARS:
        raise _too_large("the replaced text")


# -- calls -----------------------------------------------------------------------------------

_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def check_call(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuses a string method call that would pad, join or replace its way past the limits."""
    method = getattr(target, "__wrapped__", target)  # the sandbox wraps str.format
    if not isinstance(method, BuiltinMethodType) or not isinstance(method.__self__, str):
        return
    text, name = method.__self__, method.__name__
    if name in _PADDING_METHODS:
        _check_count_arguments(name, [*args, *kwargs.values()])
    elif name == "join" and args:
        _check_join(text, args[0])
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, args[0], args[1])
    elif name in ("format", "format_map"):
        check_format(text, "{}")


# Filters whose numeric arguments say how much to pad, repeat or group.
_SIZING_FILTERS = frozenset({"center", "batch", "slice", "tojson", "truncate", "wordwrap"})


def _check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if name in _SIZING_FILTERS:
        _check_count_arguments(name, [*args, *kwargs.values()])
    if name == "join":
        _check_join(args[0] if args else kwargs.get("d", ""), value)
    elif name == "replace" and len(args) >= 2:
        _check_replace(value, args[0], args[1])
    elif name == "format" and isinstance(value, str):
        check_format(value, "%")
    elif name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        lines = value.count("\n") + 1 if isinstance(value, str) else 1
        if lines * (_length(width) if isinstance(width, str) else width) > MAX_VALUE_CHARS:
            raise _too_large("the indented text")
    elif name == "wordwrap" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 79)
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring") or "\n"
        if (len(value) // max(int(width), 1) + 1) * len(str(wrap)) > MAX_VALUE_CHARS:
            raise _too_large("the wrapped text")


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    # Filters that take the context, eval context or environment get it before the value.
    offset = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _step()
        if len(args) > offset:
            _check_filter(name, args[offset], args[offset + 1 :], kwargs)
        return check_size(function(*args, **kwargs))

    return guarded


# -- the environment -------------------------------------------------------------------------


@pass_context
def _count_step(context: Context, iterable: Any) -> Any:
    """Each iteration of a ``for`` loop counts as a step."""
    if _budget.get() is None or isinstance(iterable, Undefined):
        return iterable
    return _stepping(iterable)


def _stepping(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _step()
        yield item


@pass_context
def _count_output(context: Context, value: Any) -> Any:
    budget = _budget.get()
    if budget is not None:
        budget.produce(len(value) if isinstance(value, str) else text_size(value, MAX_OUTPUT_CHARS))
    return value


@pass_context
def _bounded_value(context: Context, value: Any) -> Any:
    return check_size(value)


def _wrap(node: nodes.Node, name: str) -> nodes.Filter:
    assert isinstance(node, nodes.Expr)
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _Budgeted(NodeTransformer):
    """Rewrites a parsed template so loops, output and joined text count against the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _wrap(node.iter, _STEP)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            _wrap(
                nodes.MarkSafeIfAutoescape(child) if isinstance(child, nodes.TemplateData) else child, _OUTPUT
            )
            for child in node.nodes
        ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _wrap(node, _VALUE)

    # A literal list may name one long string many times: [x, x, x, ...].
    def visit_List(self, node: nodes.List) -> nodes.Node:
        self.generic_visit(node)
        return _wrap(node, _VALUE)

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:
        self.generic_visit(node)
        return _wrap(node, _VALUE)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        self.generic_visit(node)
        return node if node.ctx != "load" else _wrap(node, _VALUE)


class EmailSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with the budget above, where reaching for internals fails loudly.

    Jinja's sandbox turns ``''.__class__`` into an undefined value; with a chainable undefined
    that would render as an empty string and hide the attempt. Raising makes it a permanent
    delivery error that shows up in the automation's log.
    """

    # Intercepted operators go through call_binop and are never folded at compile time.
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("lipsum", None)  # generates text of any length; no email needs it
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}
        self.filters.update({_STEP: _count_step, _OUTPUT: _count_output, _VALUE: _bounded_value})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        budgeted = _Budgeted().visit(tree)
        assert isinstance(budgeted, nodes.Template)
        return budgeted

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        check_call(__obj, args, kwargs)
        budget = _budget.get() if isinstance(__obj, Macro) else None
        if budget is None:
            return check_size(super().call(__context, __obj, *args, **kwargs))
        budget.depth += 1
        try:
            if budget.depth > MAX_MACRO_DEPTH:
                raise RenderLimit(
                    f"macros call macros more than {MAX_MACRO_DEPTH} levels deep (a macro that calls "
                    "itself without end?)"
                )
            return check_size(super().call(__context, __obj, *args, **kwargs))
        finally:
            budget.depth -= 1


__all__ = [
    "MAX_MACRO_DEPTH",
    "MAX_OUTPUT_CHARS",
    "MAX_RENDER_SECONDS",
    "MAX_SOURCE_CHARS",
    "MAX_STEPS",
    "MAX_VALUE_CHARS",
    "EmailSandbox",
    "RenderLimit",
    "check_binop",
    "rendering",
    "text_size",
]
