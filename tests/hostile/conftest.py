"""Fixtures of tests/hostile: collector processes and targets come from the collector tests."""

from tests.collector.conftest import collectors, sqlite_target

__all__ = ["collectors", "sqlite_target"]
