"""Every flag of every command: help with its default and its variable, `--version` everywhere.

The parsers are not listed by hand: each console script of the installed distribution is
called and the parser it builds is captured, so a new command or flag is covered at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from walbroker import flags

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def scripts() -> list[metadata.EntryPoint]:
    found = [
        e
        for e in metadata.entry_points(group="console_scripts")
        if e.dist and e.dist.name == "gputel"
    ]
    assert {e.name for e in found} >= {"walbroker", "gputel-up", "gputel-gateway"}
    return sorted(found, key=lambda e: e.name)


def built_parser(entry: metadata.EntryPoint, monkeypatch) -> argparse.ArgumentParser:
    """The parser the command builds, caught when it starts parsing."""

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Captured) as caught:
        entry.load()([])
    return caught.value.parser


def walk(parser: argparse.ArgumentParser, path: str):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


@pytest.mark.parametrize("entry", scripts(), ids=lambda e: e.name)
def test_every_flag_says_its_default_and_variable(entry, monkeypatch):
    parsers = list(walk(built_parser(entry, monkeypatch), entry.name))
    checked = 0
    for path, parser in parsers:
        assert parser.description, f"{path}: no description"
        assert any(isinstance(a, argparse._VersionAction) for a in parser._actions), path
        for action in parser._actions:
            if not action.option_strings or isinstance(
                action, argparse._HelpAction | argparse._VersionAction
            ):
                continue
            text = action.help or ""
            flag = f"{path} {action.option_strings[-1]}"
            assert "default" in text or "required" in text, f"{flag}: no default in {text!r}"
            assert "env GPUTEL_" in text or "no env:" in text, f"{flag}: no variable in {text!r}"
            checked += 1
    assert checked >= 1, "no flag found: the parser was not captured"


@pytest.mark.parametrize("entry", scripts(), ids=lambda e: e.name)
def test_version_everywhere(entry):
    out = subprocess.run(
        [str(BIN / entry.name), "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{entry.name} {metadata.version('gputel')}"


def test_walbroker_serve_help_describes_the_broker():
    out = subprocess.run(
        [str(BIN / "walbroker"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0
    assert "LMDB write-ahead log" in out.stdout
    assert "(default: 16; env GPUTEL_BROKER_PARTITIONS)" in out.stdout


def test_the_documented_variable_sets_the_default_and_a_flag_wins():
    def build(env):
        p = argparse.ArgumentParser(prog="x", description="d")
        p.add_argument("--port", type=int, default=8080, help="a port")
        p.add_argument("--fast", action="store_true", help="go")
        p.add_argument("--tag", action="append", type=int, default=[])
        p.add_argument("--influx-url", default="", help="url")
        p.add_argument("--influx-token", default="", help="secret")
        p.add_argument("--name", required=True)
        return flags.finish(p, env, "GPUTEL_X_")

    env = {
        "GPUTEL_X_PORT": "9",
        "GPUTEL_X_FAST": "yes",
        "GPUTEL_X_TAG": "1,2",
        "GPUTEL_INFLUX_URL": "http://i",
        "GPUTEL_INFLUX_TOKEN": "s3cret",
        "GPUTEL_X_NAME": "n",
    }
    a = build(env).parse_args([])
    assert (a.port, a.fast, a.tag, a.influx_url, a.influx_token, a.name) == (
        9,
        True,
        [1, 2],
        "http://i",
        "s3cret",
        "n",
    )
    assert build(env).parse_args(["--port", "7"]).port == 7
    assert build({}).parse_args(["--name", "m"]).fast is False
    text = build(env).format_help()
    assert "s3cret" not in text and "(default: hidden; env GPUTEL_INFLUX_TOKEN)" in text
    assert "(default: 9; env GPUTEL_X_PORT)" in text
    with pytest.raises(SystemExit):
        build({}).parse_args([])  # --name is still required without its variable


def test_gputel_up_reads_its_variables(monkeypatch):
    from gputel import up

    monkeypatch.setenv("GPUTEL_UP_PORT", "18080")
    monkeypatch.setenv("GPUTEL_UP_STREAMERS", "3")
    a = up.parse_args([])
    assert (a.port, a.streamers) == (18080, 3)


def test_gputel_up_passes_the_streamers_variables_unless_its_own_flag_is_given(monkeypatch):
    """GPUTEL_STREAMER_RATE had no effect under gputel-up: it always passed --pass-interval 10,
    which the streamer rightly let win over the variable (as it did --time and --forever)."""
    from gputel import up
    from streamer.config import parse_config

    def streamer(argv: list[str]):
        a = up.parse_args(argv)
        comp = next(c for c in up.plan(a) if c.name == "streamer-0")
        return parse_config(comp.argv[1:], os.environ), comp.finishes

    monkeypatch.setenv("GPUTEL_STREAMER_RATE", "5")
    monkeypatch.setenv("GPUTEL_STREAMER_PASSES", "2")
    monkeypatch.setenv("GPUTEL_STREAMER_TIME", "source")
    config, finishes = streamer([])
    assert (config.rate_rows_per_s, config.pass_interval_s) == (5.0, None)
    assert (config.passes, config.time_mode, finishes) == (2, "source", True)

    config, finishes = streamer(["--pass-interval", "3", "--time", "processing", "--passes", "4"])
    assert (config.rate_rows_per_s, config.pass_interval_s) == (None, 3.0)
    assert (config.passes, config.time_mode) == (4, "processing")

    monkeypatch.setenv("GPUTEL_STREAMER_FOREVER", "1")
    monkeypatch.delenv("GPUTEL_STREAMER_RATE")
    monkeypatch.setenv("GPUTEL_STREAMER_PASS_INTERVAL", "7")
    config, finishes = streamer([])
    assert (config.passes, config.pass_interval_s, finishes) == (None, 7.0, False)


def test_gputel_up_pins_the_topic_and_groups_whatever_the_environment_says(monkeypatch):
    """The broker has only the `telemetry` topics, --secure grants only them and the groups
    `streamers` and `collectors`, and a new CSV resets `streamers`' progress: a variable
    naming another topic or group (a user's own GPUTEL_STREAMER_TOPIC) broke the run."""
    from collector.config import from_args as collector_config
    from gputel import up
    from streamer.config import parse_config

    for name in ("STREAMER_TOPIC", "STREAMER_GROUP", "COLLECTOR_TOPIC", "COLLECTOR_GROUP"):
        monkeypatch.setenv(f"GPUTEL_{name}", "elsewhere")
    comps = {c.name: c for c in up.plan(up.parse_args([]))}
    streamer = parse_config(comps["streamer-0"].argv[1:], os.environ)
    assert (streamer.topic, streamer.group) == ("telemetry", "streamers")
    collector = collector_config(comps["collector-0"].argv[1:])
    assert (collector.topic, collector.group) == ("telemetry", "collectors")
    broker = comps["broker"].argv
    assert "telemetry:16" in broker and "telemetry.dlq:4" in broker


def test_gputel_up_refuses_a_bad_streamer_variable(monkeypatch, capsys):
    from gputel import up

    monkeypatch.setenv("GPUTEL_STREAMER_RATE", "fast")
    with pytest.raises(SystemExit) as exc:
        up.parse_args([])
    assert exc.value.code == 2
    assert "GPUTEL_STREAMER_RATE='fast' is not a number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "ports must be between 1 and 65535, these flags give [70000]"),
        (["--port", "0"], "ports must be between 1 and 65535, these flags give [0]"),
        (["--metrics-port", "65530"], "these flags give [65540, 65550]"),
        (["--streamers", "11"], "--streamers must be between 0 and 10"),
        (["--collectors", "-1"], "--collectors must be between 0 and 20"),
        (["--pass-interval", "-1"], "--pass-interval must be a positive number"),
        (["--pass-interval", "nan"], "--pass-interval must be a positive number"),
        (["--scrape-interval", "0"], "--scrape-interval must be a positive number"),
        (["--status-interval-s", "-3"], "--status-interval-s must be 0 or more"),
        (["--store", "influx"], "--store influx needs --influx-url and --influx-bucket"),
    ],
)
def test_gputel_up_refuses_bad_values_before_starting_anything(args, message, capsys):
    """They used to start the pipeline and fail later: a traceback from bind() for a port out
    of range, a component dying "while starting", or silently nothing (negative counts)."""
    from gputel import up

    with pytest.raises(SystemExit) as exc:
        up.parse_args(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("walbroker", ["--listen", "127.0.0.1:99999"], "argument --listen: '127.0.0.1:99999' is"),
        ("walbroker", ["--listen", "nonsense"], "argument --listen: 'nonsense' is not HOST:PORT"),
        ("walbroker", ["--metrics-listen", "h:70000"], "argument --metrics-listen: 'h:70000'"),
        ("walbroker", ["--advertised-address", "a b:1"], "argument --advertised-address"),
        ("walbroker", ["--partitions", "0"], "argument --partitions: must be at least 1, not 0"),
        ("gateway", ["--bind", "127.0.0.1:99999"], "argument --bind: '127.0.0.1:99999' is not"),
        ("gateway", ["--bind", "x:1:2"], "argument --bind: 'x:1:2' is not HOST:PORT"),
    ],
)
def test_listen_addresses_and_partitions_are_checked_as_flags(command, args, message, capsys):
    """A port above 65535 made gRPC listen on the port modulo 65536 without a word, and
    gunicorn fail with a traceback; `--partitions 0` was taken."""
    from gateway import config as gateway_config
    from walbroker import cli as walbroker_cli

    if command == "walbroker":
        parse = walbroker_cli.build_parser({}).parse_args
        argv = ["serve", "--data-dir", "d", *args]
    else:
        parse, argv = gateway_config.parser({}).parse_args, args
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_good_listen_addresses_pass() -> None:
    for text in ("127.0.0.1:0", "0.0.0.0:65535", "[::1]:7070", "gputel-broker-0.svc:7070"):
        assert flags.listen_address(text) == text
    assert flags.optional_listen_address("") == ""
