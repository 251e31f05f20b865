"""Trust costs: publish and end-to-end throughput with TLS + tokens next to plaintext, one run.

The secure setup is exactly `gputel-up --secure`'s (`gputel.secure`): mutual TLS to the
broker, a bearer token per component checked on every call by the broker's interceptor,
the gateway over HTTPS with its token file. Each pair runs back to back on the same
machine, plaintext first, and the pairs are repeated (`rounds`, interleaved): the best
figure of each mode goes into the ratio secure / plaintext (target >= 0.8), so a burst of
another tenant's load in one window does not decide it. Every run is in the JSON.

- publish: 4 producer processes, 1,000-point batches of opaque bytes (as `broker_bench`),
  fsync on every commit, then one consumer reading it all back.
- end to end: CSV -> streamer -> broker -> collector -> SQLite, every component its own
  process (`tests/e2e/pipeline.Pipeline`), the streamer offered more than the pipeline
  takes (`--rate`), so the window measures what it can carry: points acknowledged by the
  broker (`published`) and written + committed by the collector (`stored`) per second. After
  the window the streamer stops, the collector drains, and the store must hold exactly what
  the broker's log holds (`exact`).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.broker_bench import consume, publish
from bench.e2e_bench import FLUSHED, PUBLISHED, counter, metrics_url, scrape
from gputel import secure
from gputel.secure import SecureSetup
from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from scripts import gen_dcgm
from store import open_store
from tests.e2e.pipeline import Pipeline, wait_for
from tests.fixtures.broker import BrokerProcess
from walbroker.client import channel
from walbroker.credentials import ClientSecurity

PARTITIONS = 16


def client(tls: SecureSetup | None, principal: str) -> ClientSecurity | None:
    """A principal's credentials from the secure setup (None: plaintext, no token)."""
    if tls is None:
        return None
    return ClientSecurity(tls.token(principal), tls.ca, tls.cert(principal), tls.key(principal))


def broker(work: Path, name: str, tls: SecureSetup | None, *args: str) -> BrokerProcess:
    """A started broker, with the secure setup's flags when given."""
    creds = None
    if tls is not None:
        creds = grpc.ssl_channel_credentials(
            tls.ca.read_bytes(), tls.key("admin").read_bytes(), tls.cert("admin").read_bytes()
        )
        args = (*args, *tls.broker_args())
    return BrokerProcess(work / name, "--partitions", str(PARTITIONS), *args,
                         credentials=creds).start()  # fmt: skip


def publish_pair(work: Path, tls: SecureSetup, rounds: int) -> dict[str, Any]:
    """Publish and consume throughput, plaintext then TLS + tokens, `rounds` times."""
    runs: dict[str, list[dict[str, Any]]] = {"plaintext": [], "tls_tokens": []}
    for r in range(rounds):
        for mode, setup in (("plaintext", None), ("tls_tokens", tls)):
            b = broker(work, f"pub-{mode}-{r}", setup, "--retention-bytes", str(16 * 1024**3))
            try:
                # The streamer's token may publish only to `telemetry`: the bench topic is that.
                pub = publish(b.address, "telemetry", security=client(setup, "streamer"))
                con = consume(
                    b.address, "telemetry", pub["points"], security=client(setup, "bench")
                )
            finally:
                b.stop()
            runs[mode].append({"publish": pub, "consume": con})
    out: dict[str, Any] = {"runs": runs}
    for figure in ("publish", "consume"):
        best = {m: max(r[figure]["points_per_s"] for r in rs) for m, rs in runs.items()}
        out[f"{figure}_points_per_s"] = best
        out[f"ratio_{figure}"] = round(best["tls_tokens"] / best["plaintext"], 3)
    return out


def e2e_pair(
    work: Path, tls: SecureSetup, rate: int, duration_s: float, rounds: int
) -> dict[str, Any]:
    """The pipeline's sustained throughput, plaintext then TLS + tokens, `rounds` times."""
    csv = work / "dcgm.csv"
    with open(csv, "w", encoding="utf-8", newline="") as f:
        gen_dcgm.write(f, 11, 64, 8, 10)
    runs: dict[str, list[dict[str, Any]]] = {"plaintext": [], "tls_tokens": []}
    for r in range(rounds):
        for mode, setup in (("plaintext", None), ("tls_tokens", tls)):
            runs[mode].append(e2e_once(work / f"e2e-{mode}-{r}", csv, setup, rate, duration_s))
    out: dict[str, Any] = {
        "runs": runs,
        "exact": all(x["exact"] for rs in runs.values() for x in rs),
    }
    for key in ("published_points_per_s", "stored_points_per_s"):
        best = {m: max(x[key] for x in rs) for m, rs in runs.items()}
        out[key] = best
        out[f"ratio_{key.split('_')[0]}"] = round(best["tls_tokens"] / best["plaintext"], 3)
    return out


def e2e_once(
    tmp: Path, csv: Path, tls: SecureSetup | None, rate: int, duration_s: float
) -> dict[str, Any]:
    tmp.mkdir(parents=True)
    b = broker(tmp, "broker", tls)
    db = tmp / "store.db"
    pipe = Pipeline(tmp, b, ["--store", f"sqlite:{db}"], csv, secure=tls)
    try:
        collector = pipe.collector("--flush-ms", "1000").start()
        streamer = pipe.streamer("--forever", "--rate", str(rate)).start()
        time.sleep(5)  # warm-up: groups formed, first batches through
        urls = {"c": metrics_url(collector), "s": metrics_url(streamer)}
        m0, t0 = {k: scrape(u) for k, u in urls.items()}, time.monotonic()
        time.sleep(duration_s)
        m1, seconds = {k: scrape(u) for k, u in urls.items()}, time.monotonic() - t0
        stored = counter(m1["c"], FLUSHED) - counter(m0["c"], FLUSHED)
        published = counter(m1["s"], PUBLISHED) - counter(m0["s"], PUBLISHED)
        streamer.terminate(60)
        drained = wait_for(lambda: pipe.lag() == 0, 120, 0.2)
        appended = log_end(b.address, client(tls, "admin"))
        with open_store(f"sqlite:{db}") as store:
            count = sum(store.count_points().values())
        return {
            "window_s": round(seconds, 2),
            "offered_points_per_s": rate,
            "published_points_per_s": round(published / seconds),
            "stored_points_per_s": round(stored / seconds),
            "exact": drained and count == appended,
        }
    finally:
        pipe.stop_all()
        b.stop()


def log_end(address: str, security: ClientSecurity | None) -> int:
    with channel(address, security) as ch:
        resp = apb_grpc.AdminStub(ch).DescribeTopic(
            apb.DescribeTopicRequest(topic="telemetry"), timeout=10
        )
    return int(resp.topic.log_end_offset)


def run(rate: int = 150_000, duration_s: float = 20.0, rounds: int = 2) -> dict[str, Any]:
    """Both pairs; the machine's other tenants affect both halves of a pair alike."""
    work = Path(tempfile.mkdtemp(prefix="gputel-secure-bench-"))
    try:
        tls = secure.ensure(work)
        _add_bench_principal(tls)
        return {
            "setup": "gputel-up --secure: mutual TLS to the broker, a token per component",
            "rounds": rounds,
            "publish": publish_pair(work, tls, rounds),
            "end_to_end": e2e_pair(work, tls, rate, duration_s, rounds),
            "targets": {"ratio_secure_to_plaintext": 0.8},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _add_bench_principal(tls: SecureSetup) -> None:
    """A consumer for the publish pair's read-back (group bench-consume), with its own cert."""
    from gputel.pki import write_private
    from walbroker.tokens import new_token, token_line

    token = new_token()
    write_private(tls.token("bench"), token + "\n")
    line = token_line("bench", ["consume"], token, ["topic=telemetry", "group=bench-consume"])
    with open(tls.broker_tokens, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    for name in ("cert", "key"):
        shutil.copy(getattr(tls, name)("admin"), getattr(tls, name)("bench"))


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    print(json.dumps(run(duration_s=secs), indent=2))
