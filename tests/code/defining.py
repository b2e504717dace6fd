"""Flow classes defined from source text, as a notebook cell run again defines them anew."""

from __future__ import annotations


def define(source: str, name: str, **names: object) -> type:
    """Run ``source`` (which may use ``names``) and return the class it defines as ``name``.

    Each call makes a new class from its own code, the way editing and running a class cell
    again does; the source has no file, so its fingerprint comes from its bytecode.
    """
    namespace: dict[str, object] = dict(names)
    exec(compile(source, f"<{name} {hash(source)}>", "exec"), namespace)
    defined = namespace[name]
    assert isinstance(defined, type)
    return defined
