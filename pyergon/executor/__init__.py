"""Executors: the direct Executor, the Scheduler and Workers, and the durable operations."""

__all__: list[str] = []
