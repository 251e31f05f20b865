"""Shared fixtures live in tests/fixtures/*; each module owns one real component."""

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.influx",
    "tests.kafka_cluster",
]
