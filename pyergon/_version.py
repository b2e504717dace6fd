"""The package version, in a module of its own so the CLI can read it without the façade."""

__version__ = "0.9.0"
