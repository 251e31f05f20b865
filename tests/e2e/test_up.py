"""`gputel-up` (make run): the whole pipeline starts, serves data, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import socket
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request

from gateway.times import format_time
from tests.e2e.pipeline import BIN, http_get
from tests.streamer.streaming import START, make_csv, uuid_of
from tests.support import wait_until


def free_block(size: int = 40) -> int:
    """A base port with `size` free ports after it."""
    for _ in range(50):
        base = random.randrange(20_000, 60_000)
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of ports")


def up(tmp_path, *args: str, log_format: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "GPUTEL_LOG_FORMAT"}
    if log_format:
        env["GPUTEL_LOG_FORMAT"] = log_format
    return subprocess.Popen(
        [str(BIN / "gputel-up"), "--data-dir", str(tmp_path / "var"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )


def ports(base: int) -> list[str]:
    return ["--port", str(base), "--broker-port", str(base + 1), "--metrics-port", str(base + 2)]


def read_until(proc, lines: list[str], done) -> None:
    while not done(lines):
        line = proc.stdout.readline()
        assert line, "gputel-up ended early:\n" + "".join(lines)
        lines.append(line)


def stop(proc) -> str:
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "gputel-up: stopped" in rest
    return rest


def test_up_runs_every_component_serves_data_and_stops_on_ctrl_c(tmp_path):
    """Not on a terminal: every line is JSON, status records come, Ctrl-C stops it all."""
    base = free_block()
    proc = up(tmp_path, *ports(base), "--pass-interval", "1", "--status-interval-s", "1")
    lines: list[str] = []
    try:
        read_until(proc, lines, lambda ls: any('"gputel is up' in line for line in ls))
        api = f"http://127.0.0.1:{base}"

        def gpus() -> list:
            status, body = http_get(f"{api}/api/v1/gpus")
            return json.loads(body)["gpus"] if status == 200 else []

        assert wait_until(lambda: len(gpus()) == 255, 60), "the sample's 255 GPUs never arrived"

        def flowing(ls: list[str]) -> bool:
            docs = [json.loads(line) for line in ls if '"pipeline"' in line]
            return any(
                d["pipeline"]["stored_per_s"] > 0 and d["pipeline"]["store"] == "ready"
                for d in docs
                if d.get("component") == "gputel-up"
            )

        read_until(proc, lines, flowing)
        docs = [json.loads(line) for line in lines]  # every line is one JSON object
        components = {d.get("component") for d in docs}
        assert {"walbroker", "collector", "gateway", "streamer", "gputel-up"} <= components
        status_doc = next(d for d in docs if "pipeline" in d)
        assert (
            status_doc["msg"].startswith("status: ") and "points/s published" in status_doc["msg"]
        )
        out = subprocess.run(
            [
                str(BIN / "walbroker"),
                "admin",
                "--broker",
                f"127.0.0.1:{base + 1}",
                "describe-group",
                "collectors",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and "collectors" in out.stdout
    finally:
        rest = stop(proc)
    time.sleep(0.5)
    for port in (base, base + 1, base + 3):  # gateway, broker, broker metrics: nobody listens
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            s.bind(("127.0.0.1", port))
    assert rest is not None


def test_text_banner_comes_last_and_its_examples_work_as_printed(tmp_path):
    """In text: after the banner only status lines (and warnings), and each example runs."""
    base = free_block()
    proc = up(
        tmp_path, *ports(base), "--pass-interval", "1", "--status-interval-s", "1",
        log_format="text",
    )  # fmt: skip
    lines: list[str] = []
    try:
        read_until(proc, lines, lambda ls: sum(line.startswith("status: ") for line in ls) >= 3)
        at = next(i for i, line in enumerate(lines) if line.startswith("gputel is up"))
        assert any(" | " in line for line in lines[:at]), "start-up logs come before the banner"
        after = [line for line in lines[at:] if " | " in line]
        assert not [line for line in after if " INFO " in line], after
        examples = [line.strip() for line in lines[at:] if line.startswith("  curl ")]
        examples += [line.strip() for line in lines[at:] if " admin --broker " in line]
        assert len(examples) == 4, lines[at:]
        for command in examples:
            out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0 and out.stdout.strip(), (command, out.stderr)
            assert (
                "DCGM_FI_DEV_GPU_UTIL" in out.stdout
                or "uuid" in out.stdout
                or ("collectors" in out.stdout and "HOST" in out.stdout)
            ), (command, out.stdout)
    finally:
        stop(proc)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_closed_terminal_stops_every_component(tmp_path):
    """SIGHUP (the terminal closed) stops the components, which run in sessions of their own:
    before, gputel-up died of it and left the broker and the collector running on their ports."""
    base = free_block()
    proc = up(tmp_path, *ports(base))
    lines: list[str] = []
    children: list[int] = []
    try:
        read_until(proc, lines, lambda ls: any('"gputel is up' in line for line in ls))
        children += children_of(proc.pid)
        assert len(children) == 4, children  # broker, collector, gateway, streamer
        proc.send_signal(signal.SIGHUP)
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, rest
        assert "gputel-up: stopped" in rest
        assert wait_until(lambda: not any(alive(pid) for pid in children), 10), [
            pid for pid in children if alive(pid)
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in children:  # what a failed stop left running
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_port_in_use_and_missing_csv_are_one_line_errors(tmp_path):
    base = free_block()
    busy_message = (
        f"gputel-up: port {base} (the gateway's port, --port) is already in use: "
        "choose another with that flag, or stop what uses it"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        p = up(tmp_path, *ports(base), log_format="text")
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 1
        assert out.strip() == busy_message
        p = up(tmp_path, *ports(base))  # not a terminal: the same, as one JSON line
        out, _ = p.communicate(timeout=30)
    assert p.returncode == 1
    record = json.loads(out)
    assert (record["level"], record["component"], record["msg"]) == (
        "error",
        "gputel-up",
        busy_message,
    )
    p = up(tmp_path, *ports(base), "--csv", str(tmp_path), log_format="text")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1
    assert out.strip() == f"gputel-up: --csv {tmp_path} is a directory: give a DCGM CSV file"
    p = up(
        tmp_path,
        "--port",
        str(base),
        "--broker-port",
        str(base + 1),
        "--metrics-port",
        str(base + 2),
        "--csv",
        str(tmp_path / "nope.csv"),
        log_format="text",
    )
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1
    assert out.strip() == f"gputel-up: CSV file not found: {tmp_path / 'nope.csv'}"


def test_import_once_at_source_time_round_trips_through_the_api(tmp_path):
    """`gputel-up --csv FILE --passes 1 --time source`: every row once, at its own time."""
    gpus, metrics, scrapes = 12, 3, 4
    csv = make_csv(tmp_path / "export.csv", gpus, metrics, scrapes)
    base = free_block()
    ports = ["--port", str(base), "--broker-port", str(base + 1), "--metrics-port", str(base + 2)]
    proc = up(tmp_path, *ports, "--csv", str(csv), "--passes", "1", "--time", "source",
              "--streamers", "2")  # fmt: skip
    lines: list[str] = []
    try:
        while sum("finished its passes" in line for line in lines) < 2:
            line = proc.stdout.readline()
            assert line, "gputel-up ended before the import finished:\n" + "".join(lines)
            lines.append(line)
        api = f"http://127.0.0.1:{base}/api/v1"
        window = f"start_time={START}&end_time={START + 30 * scrapes}&limit=10000"

        def points(i: int) -> list[dict]:
            status, body = http_get(f"{api}/gpus/{uuid_of(i)}/telemetry?{window}")
            return json.loads(body)["points"] if status == 200 else []

        assert wait_until(lambda: all(len(points(i)) == metrics * scrapes for i in range(gpus)), 30)
        for i in range(gpus):
            got = [(p["time"], p["source_time"], p["metric"], p["value"]) for p in points(i)]
            expected = [
                (stamp, stamp, f"DCGM_FI_DEV_M{m}", float(s * 100 + m))
                for s in range(scrapes)
                for stamp in [format_time((START + 30 * s) * 10**9)]
                for m in range(metrics)
            ]
            assert got == expected
        assert proc.poll() is None  # the rest keeps serving after the import
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest


def test_a_second_import_into_the_same_data_dir_sends_its_own_rows(tmp_path):
    """Yesterday's export, then today's (the same GPUs): the streamers' progress from the run
    before must not count for this one. It did, and the second import sent nothing at all
    while saying it had finished its passes."""
    gpus, metrics, scrapes = 8, 3, 4
    first = make_csv(tmp_path / "first.csv", gpus, metrics, scrapes)
    second = tmp_path / "second.csv"  # the same rows, a day later
    second.write_text(first.read_text().replace('"2025-07-18T', '"2025-07-19T'))
    base = free_block()

    def import_(csv) -> list[str]:
        proc = up(tmp_path, *ports(base), "--csv", str(csv), "--passes", "1", "--time", "source")
        lines: list[str] = []
        read_until(proc, lines, lambda got: any("finished its passes" in x for x in got))
        return [*lines, stop(proc)]

    import_(first)
    proc = up(tmp_path, *ports(base), "--csv", str(second), "--passes", "1", "--time", "source")
    lines: list[str] = []
    try:
        read_until(proc, lines, lambda got: any("finished its passes" in x for x in got))
        day2 = START + 86_400
        window = f"start_time={day2}&end_time={day2 + 30 * scrapes}&limit=10000"

        def points(i: int) -> int:
            url = f"http://127.0.0.1:{base}/api/v1/gpus/{uuid_of(i)}/telemetry?{window}"
            status, body = http_get(url)
            return len(json.loads(body)["points"]) if status == 200 else -1

        assert wait_until(lambda: all(points(i) == metrics * scrapes for i in range(gpus)), 30), [
            points(i) for i in range(gpus)
        ]
        assert any("source changed since the last run" in x for x in lines), "".join(lines)
    finally:
        stop(proc)
    again = "".join(import_(second))  # the same import again: its progress is kept
    assert "source changed" not in again, again


def test_up_secure_runs_over_tls_with_a_token_per_component(tmp_path):
    base = free_block()
    proc = up(tmp_path, "--secure", "--port", str(base), "--broker-port", str(base + 1),
              "--metrics-port", str(base + 2), "--pass-interval", "1",
              log_format="text")  # fmt: skip
    lines: list[str] = []
    secure_dir = tmp_path / "var" / "secure"
    try:
        while "gputel is up" not in "".join(lines):
            line = proc.stdout.readline()
            assert line, "gputel-up ended before it was up:\n" + "".join(lines)
            lines.append(line)
        while not any("describe-group" in ln for ln in lines):
            lines.append(proc.stdout.readline())
        banner = "".join(lines)
        api = f"https://127.0.0.1:{base}"
        assert f"{api}/api/v1/gpus" in banner and "--cacert" in banner
        ctx = ssl.create_default_context(cafile=str(secure_dir / "ca.pem"))
        token = (secure_dir / "api.token").read_text().strip()

        def get(path: str, bearer: str | None) -> tuple[int, bytes]:
            req = urllib.request.Request(api + path)
            if bearer:
                req.add_header("Authorization", f"Bearer {bearer}")
            try:
                with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert get("/api/v1/gpus", None)[0] == 401

        def gpus() -> list:
            status, body = get("/api/v1/gpus", token)
            return json.loads(body)["gpus"] if status == 200 else []

        assert wait_until(lambda: len(gpus()) == 255, 90), "the sample's 255 GPUs never arrived"
        # The web view's pipeline relay reads the broker with its own read-only principal.
        assert get("/ui/api/pipeline", None)[0] == 401
        status, body = get("/ui/api/pipeline", token)
        assert status == 200 and json.loads(body)["topics"][0]["topic"]["name"] == "telemetry"
        # The admin command the banner shows works as printed; without credentials it does not.
        admin_line = next(ln for ln in lines if "walbroker admin" in ln and "describe-group" in ln)
        argv = shlex.split(admin_line.strip())
        out = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                             timeout=30)  # fmt: skip
        assert out.returncode == 0 and "collectors" in out.stdout, out.stderr
        bare = subprocess.run([str(BIN / "walbroker"), "admin", "--broker",
                               f"127.0.0.1:{base + 1}", "groups"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert bare.returncode == 4 and "speaks TLS" in bare.stderr
        for path in secure_dir.iterdir():
            if path.suffix in (".key", ".token") or path.name.endswith("tokens.txt"):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for token_file in secure_dir.glob("*.token"):
            assert token_file.read_text().strip() not in banner
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "gputel-up: stopped" in rest


def test_scrape_demo_shows_the_live_path(tmp_path):
    """`gputel-up --scrape-demo 3`: fake exporters scraped live, their GPUs in the API."""
    base = free_block(50)
    proc = up(tmp_path, "--port", str(base), "--broker-port", str(base + 1), "--metrics-port",
              str(base + 2), "--scrape-demo", "3", "--scrape-interval", "1")  # fmt: skip
    lines: list[str] = []
    try:
        while "gputel is up" not in "".join(lines):
            line = proc.stdout.readline()
            assert line, "gputel-up ended before it was up:\n" + "".join(lines)
            lines.append(line)
        api = f"http://127.0.0.1:{base}/api/v1"

        def gpus() -> list:
            status, body = http_get(f"{api}/gpus")
            return json.loads(body)["gpus"] if status == 200 else []

        assert wait_until(lambda: len(gpus()) == 24, 60), "the demo's 24 GPUs never arrived"
        assert {g["hostname"] for g in gpus()} == {"demo-0000", "demo-0001", "demo-0002"}
        uuid = gpus()[0]["uuid"]
        # The banner's examples name a GPU the demo streams, not the sample CSV's first row.
        (shown,) = [json.loads(x)["banner"] for x in lines if '"banner"' in x]
        assert "hostname=demo-000" in shown and "dgx-h100" not in shown, shown
        assert any(f"/gpus/{g['uuid']}/telemetry" in shown for g in gpus()), shown

        def scrapes() -> int:
            status, body = http_get(f"{api}/gpus/{uuid}/telemetry?metric=DCGM_FI_DEV_GPU_UTIL")
            return len(json.loads(body)["points"]) if status == 200 else 0

        assert wait_until(lambda: scrapes() >= 3, 30)  # a new scrape every second
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
