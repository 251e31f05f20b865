"""Target discovery: static URLs, file_sd (JSON and YAML, reloaded on change), DNS names."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from streamer.targets import (
    TargetsError,
    TargetSet,
    check_url,
    parse_file_sd,
    parse_url,
    redact,
    resolve,
    split_dns,
)


def test_file_sd_json_and_yaml_with_scheme_and_path() -> None:
    doc = '[{"targets": ["10.0.0.1:9400", "10.0.0.2:9400"], "labels": {"job": "dcgm"}},'
    doc += ' {"targets": ["h3:443"], "labels": {"__scheme__": "https", "__metrics_path__": "m"}}]'
    expected = [
        "http://10.0.0.1:9400/metrics", "http://10.0.0.2:9400/metrics", "https://h3:443/m",
    ]  # fmt: skip
    assert parse_file_sd(doc) == expected
    yaml_doc = """
- targets: [10.0.0.1:9400, 10.0.0.2:9400]
  labels: {job: dcgm}
- targets: ["h3:443"]
  labels:
    __scheme__: https
    __metrics_path__: /m
"""
    assert parse_file_sd(yaml_doc) == expected
    assert parse_file_sd("") == [] and parse_file_sd("[]") == []


@pytest.mark.parametrize(
    "doc", ['{"targets": ["a:1"]}', '[{"targets": "a:1"}]', "[1]", "[{", '[{"targets": ["a:1"],'
            ' "labels": {"__scheme__": "ftp"}}]', '[{"targets": [], "labels": [1]}]'],
)  # fmt: skip
def test_malformed_file_sd_is_an_error(doc: str) -> None:
    with pytest.raises(TargetsError):
        parse_file_sd(doc)


def test_file_is_re_read_when_it_changes_and_a_bad_version_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    f = tmp_path / "targets.json"
    f.write_text('[{"targets": ["a:1"]}]')
    errors: list[str] = []
    ts = TargetSet(static=["http://s:9/metrics"], file=str(f),
                   on_error=lambda source, _reason: errors.append(source))  # fmt: skip
    assert ts.refresh() == ["http://a:1/metrics", "http://s:9/metrics"]
    f.write_text('[{"targets": ["a:1", "b:2"]}]')
    os.utime(f, (1, 1))  # a new stamp even within the file system's time resolution
    assert ts.refresh() == ["http://a:1/metrics", "http://b:2/metrics", "http://s:9/metrics"]
    f.write_text("[{ broken")
    os.utime(f, (2, 2))
    assert ts.refresh() == ["http://a:1/metrics", "http://b:2/metrics", "http://s:9/metrics"]
    assert errors == ["file"]
    f.unlink()
    assert len(ts.refresh()) == 3 and errors == ["file", "file"]


def test_dns_names_are_resolved_every_refresh_and_a_failure_keeps_the_last_answer() -> None:
    answers = [["10.0.0.1:9400"], ["10.0.0.1:9400", "10.0.0.2:9400"], OSError("no such host")]

    def resolver(name: str, port: int) -> list[str]:
        assert (name, port) == ("dcgm-exporter.gpu-operator.svc", 9400)
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    errors: list[str] = []
    ts = TargetSet(dns=["dcgm-exporter.gpu-operator.svc:9400"], resolver=resolver,
                   on_error=lambda source, _reason: errors.append(source))  # fmt: skip
    assert ts.refresh() == ["http://10.0.0.1:9400/metrics"]
    assert len(ts.refresh()) == 2
    assert len(ts.refresh()) == 2 and errors == ["dns"]


def test_real_resolution_of_localhost_and_dns_spec_syntax() -> None:
    found = resolve("localhost", 9400)
    assert found and all(a.endswith(":9400") for a in found)
    assert "127.0.0.1:9400" in found or "[::1]:9400" in found
    assert split_dns("svc.ns:9400") == ("svc.ns", 9400)
    for bad in ("svc", "svc:", ":9400", "svc:99999", "svc:x"):
        with pytest.raises(TargetsError):
            split_dns(bad)


def test_file_sd_targets_the_scraper_cannot_fetch_are_refused_counted_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    f = tmp_path / "targets.json"
    f.write_text('[{"targets": ["a:1", "127.0.0.1:-1", "[::1", "b:99999", "c:0", "ftp://d/m"]}]')
    errors: list[tuple[str, str]] = []
    ts = TargetSet(file=str(f), on_error=lambda *e: errors.append(e))
    assert ts.refresh() == ["http://a:1/metrics"]
    assert errors == [("file", "bad_url")] * 5


@pytest.mark.parametrize(
    "url", ["http://h:-1/m", "http://[::1/m", "http://h:65536/m", "h:1", "http:///m"]
)
def test_check_url_names_the_url_it_refuses(url: str) -> None:
    with pytest.raises(TargetsError) as refused:
        check_url(url)
    assert repr(url) in str(refused.value)
    assert check_url("https://[::1]:9400/metrics?x=1") == "https://[::1]:9400/metrics?x=1"


def test_a_file_sd_target_with_credentials_is_refused_and_its_password_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the password went into the `target` label of every per-target series (and
    was not even sent): now the target is refused, counted and logged redacted."""
    f = tmp_path / "targets.json"
    f.write_text('[{"targets": ["http://user:s3cret@a:1/metrics", "b:2"]}]')
    errors: list[tuple[str, str]] = []
    with caplog.at_level(logging.INFO, logger="streamer.targets"):
        assert TargetSet(file=str(f), on_error=lambda *e: errors.append(e)).refresh() == [
            "http://b:2/metrics"
        ]
    assert errors == [("file", "bad_url")]
    logged = [r for r in caplog.records if r.getMessage() == "target refused"]
    assert len(logged) == 1 and "http://***@a:1/metrics" in logged[0].reason
    assert "s3cret" not in repr([vars(r) for r in caplog.records])


def test_redact_hides_userinfo_only() -> None:
    assert redact("http://u:p@h:1/m?x=a@b") == "http://***@h:1/m?x=a@b"
    assert redact("u:p@h:1") == "***@h:1"
    assert redact("http://h:1/m?x=a@b") == "http://h:1/m?x=a@b"
    # A password with an unescaped / ? or # (urlsplit reads part of it as the port)
    for url in ("http://u:pa/ss@h:1/m", "http://u:p?ss@h:1/m", "http://u:p#ss@h:1/m"):
        assert redact(url) == "http://***@h:1/m", url
        with pytest.raises(TargetsError) as err:
            parse_url(url)
        assert "ss" not in str(err.value).replace("***", ""), str(err.value)
