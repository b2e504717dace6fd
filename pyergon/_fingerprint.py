"""Fingerprints of a step's code: which code made a recorded result.

A step's record keeps the fingerprint of the step's code next to the hash of its arguments, so
a result made by code that has changed since can be told apart ("stale") and recomputed on
request (``rerun``). What counts:

* The step method's own source from its ``def`` line to its end, as tokens: comments, blank
  lines, line breaks inside brackets, the width of indentation, the docstring and the
  decorators (``@step(retry_policy=...)``) do not count; everything else does, nested functions,
  lambdas and comprehensions included. Tokens, not bytecode: two Python versions give one
  fingerprint for one source, so workers on other machines agree with a notebook.
* Not the helpers it calls, nor the other steps, nor the libraries it uses: edit a helper, and
  rerun the steps that use it by name (``rerun(flow_id, from_step="load")``).
* Where no source can be found (a method made by ``exec``), its bytecode and constants, which
  are tied to the Python version.

A fingerprint is computed once per function, when ``@step`` decorates it.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import io
import sys
import textwrap
import tokenize
from collections.abc import Callable, Iterator
from types import CodeType
from typing import Any

__all__ = ["code_fingerprint"]

_SKIPPED = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER})
_STRUCTURE = frozenset({tokenize.INDENT, tokenize.DEDENT})


def code_fingerprint(function: Callable[..., Any]) -> str:
    """The fingerprint of ``function``'s code: 16 hex characters (see the module's notes)."""
    function = inspect.unwrap(function)
    try:
        material = b"source\x00" + "\x00".join(_source_tokens(function)).encode(
            "utf-8", "surrogatepass"
        )
    except (OSError, TypeError, SyntaxError, tokenize.TokenError, ValueError):
        code = getattr(function, "__code__", None)
        if not isinstance(code, CodeType):
            return ""
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        material = b"bytecode\x00" + version.encode() + _code_material(code, function.__doc__)
    return hashlib.blake2b(material, digest_size=8).hexdigest()


def _source_tokens(function: Callable[..., Any]) -> Iterator[str]:
    """The tokens of ``function``'s definition without decorators, docstring or layout."""
    lines, _ = inspect.getsourcelines(function)
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    node = tree.body[0]
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        raise ValueError("not a function definition")
    skipped_lines: set[int] = set()
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
        and len(node.body) > 1  # a body that is only a docstring keeps it (it is the body)
    ):
        skipped_lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    text = "".join(source.splitlines(keepends=True)[node.lineno - 1 :])
    offset = node.lineno - 1
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in _SKIPPED:
            continue
        if token.start[0] + offset in skipped_lines and token.type not in _STRUCTURE:
            continue  # the docstring, but not the indentation it opens the body with
        if token.type == tokenize.INDENT:
            yield "<indent>"
        elif token.type == tokenize.DEDENT:
            yield "<dedent>"
        elif token.type == tokenize.NEWLINE:
            yield "<newline>"
        else:
            yield token.string


def _code_material(code: CodeType, docstring: str | None) -> bytes:
    """Bytes that stand for a code object: its bytecode, names and constants, nested too."""
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    constants = list(code.co_consts)
    if docstring is not None and constants and constants[0] == docstring:
        constants = constants[1:]
    for constant in constants:
        if isinstance(constant, CodeType):
            parts.append(_code_material(constant, None))
        else:
            parts.append(repr(constant).encode("utf-8", "surrogatepass"))
    return b"\x00".join(len(part).to_bytes(8, "big") + part for part in parts)
