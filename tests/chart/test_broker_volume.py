"""The broker's PVC holds what walbroker needs: its LMDB map, its free-space reserve, file system.

walbroker refuses to start when its LMDB map (walbroker/config.py, 2 x --retention-bytes + 64 MiB)
exceeds the volume (walbroker/disk.py check_map_size), and refuses appends when less than
--min-free-bytes are free. The chart fails at template time when broker.persistence.size cannot
hold both with 10 % left for the file system; the defaults and every variant must pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.chart.conftest import Chart
from walbroker.config import GiB, LogConfig

UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
FS_SHARE = 0.9  # the part of a volume the chart counts on (the rest: file system overhead)


def quantity_bytes(text: str) -> float:
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([KMGT]i?)?", text)
    assert m, text
    return float(m.group(1)) * UNITS[m.group(2) or ""]


def needed_bytes(retention: int, min_free: int | None = None) -> float:
    """What the chart demands of the volume, from the broker's own configuration code."""
    log = LogConfig(Path("/nonexistent"), retention_bytes=retention)
    reserve = log.min_free_bytes if min_free is None else min_free
    return (log.map_size_bytes + reserve) / FS_SHARE


def broker_volume(chart: Chart, variant: str) -> tuple[int, float]:
    sts = chart.render(variant).get("StatefulSet", "gputel-broker")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    (retention,) = [
        int(a.split("=", 1)[1]) for a in c["args"] if a.startswith("--retention-bytes=")
    ]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    return retention, quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])


@pytest.mark.parametrize("variant_name", ["default", "scaled", "external-secret", "minimal"])
def test_every_variant_gives_the_broker_a_volume_it_can_start_on(
    chart: Chart, variant_name: str
) -> None:
    retention, size = broker_volume(chart, variant_name)
    log = LogConfig(Path("/nonexistent"), retention_bytes=retention)
    assert log.map_size_bytes < size, "walbroker's check_map_size would refuse to start"
    assert needed_bytes(retention) <= size


def test_default_budget_and_volume() -> None:
    # The documented defaults (values.yaml, docs/kubernetes.md): 4 GiB on 10Gi.
    assert needed_bytes(4 * GiB) <= quantity_bytes("10Gi") < needed_bytes(8 * GiB)


@pytest.mark.parametrize(
    "size",
    [
        "10Gi", "9Gi", "10000000000", "9900000000", "10G", "9.9G", "9685000Ki", "9684000Ki",
        "9458Mi", "9457Mi", "0.01Ti", "0.009T", "1.5Gi",
    ],
)  # fmt: skip
def test_a_volume_too_small_for_the_budget_fails_at_template_time(chart: Chart, size: str) -> None:
    proc = chart.template(
        ["external-secret.yaml"], [f"broker.persistence.size={size}"],
        ["--set", f"broker.retention.bytes={4 * GiB}"],
    )  # fmt: skip
    fits = quantity_bytes(size) >= needed_bytes(4 * GiB)
    if fits:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0
        assert f"broker.persistence.size {size} " in proc.stderr, proc.stderr
        assert "is too small for broker.retention.bytes 4294967296" in proc.stderr
        assert f"at least {needed_bytes(4 * GiB):.0f} bytes" in proc.stderr
        assert "Lower broker.retention.bytes to at most" in proc.stderr


def test_the_old_defaults_are_refused(chart: Chart) -> None:
    # 8 GiB on 10Gi: a 16 GiB map on a 10 GiB volume, a crash loop on block storage.
    proc = chart.template(
        ["external-secret.yaml"], [], ["--set", f"broker.retention.bytes={8 * GiB}"]
    )
    assert proc.returncode != 0 and "is too small" in proc.stderr, proc.stderr
    ok = chart.template(
        ["external-secret.yaml"], ["broker.persistence.size=20Gi"],
        ["--set", f"broker.retention.bytes={8 * GiB}"],
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_extra_args_that_change_the_need_are_counted(chart: Chart) -> None:
    reserve = 2 * GiB
    assert needed_bytes(4 * GiB, reserve) > quantity_bytes("10Gi")
    proc = chart.template(
        ["external-secret.yaml"], [], ["--set", f"broker.extraArgs={{--min-free-bytes={reserve}}}"]
    )
    assert proc.returncode != 0 and f"plus the {reserve} bytes it keeps free" in proc.stderr
    proc = chart.template(
        ["external-secret.yaml"], [], ["--set", f"broker.extraArgs={{--retention-bytes={8 * GiB}}}"]
    )
    assert proc.returncode != 0 and f"broker.retention.bytes {8 * GiB}" in proc.stderr


def test_the_kafka_transport_has_no_broker_volume_to_check(chart: Chart) -> None:
    proc = chart.template(["external-secret.yaml", "kafka.yaml"], ["broker.persistence.size=1Mi"])
    assert proc.returncode == 0, proc.stderr
