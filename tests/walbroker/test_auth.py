"""Authentication and authorization against a real broker process over real gRPC.

Every role against every RPC of both services (allowed, or PERMISSION_DENIED), scopes,
UNAUTHENTICATED, token rotation and revocation without a restart (file change and SIGHUP),
and the refusal to listen beyond loopback without authentication and TLS.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_pb2 as pb
from tests.fixtures.broker import BrokerProcess, free_port
from tests.fixtures.secure import Credentials
from tests.support import wait_until
from walbroker.errors import Unauthenticated
from walbroker.producer import Producer
from walbroker.tokens import hash_token, new_token

ROLES = ("produce", "consume", "read", "admin")
ADMIN_SERVICE = apb.DESCRIPTOR.services_by_name["Admin"]
READ_METHODS = {"ListTopics", "DescribeTopic", "ListGroups", "DescribeGroup"}
OK = "allowed"


@pytest.fixture
def creds(tmp_path: Path) -> Credentials:
    c = Credentials(tmp_path / "creds")
    c.add("root", "produce,consume,read,admin")
    for role in ROLES:
        c.add(f"only-{role}", role)
    return c


@pytest.fixture
def secured(creds: Credentials, broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    """A broker with tokens (plaintext: the matrix is about authorization, TLS is tested apart)."""
    b = broker_factory("--partitions", "2", "--auto-create-topics", *creds.broker_args(tls=False))
    b.start()
    # Data to look at: a topic with a record, and a group with a committed offset.
    with Producer(b.address, "telemetry", lambda xs: b"x" * len(xs),
                  security=creds.client("root", tls=False)) as p:  # fmt: skip
        p.send("gpu", 1)
        p.flush(10)
    return b


def meta(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


# Calls that passed authorization but then ended with another status: not a failure of
# the matrix, but named in its failure message so a mismatch explains itself.
OTHER_ENDINGS: dict[str, str] = {}


def outcome(fn: Callable[[], Any], label: str = "") -> str:
    """'allowed' unless the call ends UNAUTHENTICATED or PERMISSION_DENIED (then its name)."""
    try:
        fn()
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return exc.code().name
        OTHER_ENDINGS[label] = f"{exc.code().name}: {exc.details()}"
    return OK


def publish(ch: grpc.Channel, token: str | None, topic: str = "telemetry", group: str = "") -> Any:
    call = ch.stream_stream(
        "/walbroker.v1.Broker/Publish",
        request_serializer=pb.PublishRequest.SerializeToString,
        response_deserializer=pb.PublishAck.FromString,
    )
    req = pb.PublishRequest(request_id=1, topic=topic, partition=0, payload=b"x", count=1,
                            producer_id=f"t{time.monotonic_ns()}", fence_group=group)  # fmt: skip
    if group:
        req.fence_epoch = 1
    return next(iter(call(iter([req]), metadata=meta(token), timeout=10)))


def join(ch: grpc.Channel, token: str | None, group: str, topic: str = "telemetry",
         role: int = pb.CONSUMER) -> Any:  # fmt: skip
    """Join and return the first answer (the assignment); the stream stays open until then."""
    call = ch.stream_stream(
        "/walbroker.v1.Broker/Consume",
        request_serializer=pb.ConsumeRequest.SerializeToString,
        response_deserializer=pb.ConsumeResponse.FromString,
    )
    answered = threading.Event()

    def requests() -> Iterator[pb.ConsumeRequest]:
        yield pb.ConsumeRequest(join=pb.Join(group=group, topic=topic, role=role, client_id="t"))
        answered.wait(10)

    responses = call(requests(), metadata=meta(token), timeout=10)
    try:
        return next(iter(responses))
    finally:
        answered.set()
        responses.cancel()


def unary(
    ch: grpc.Channel, method: str, request: Any, response_type: Any, token: str | None
) -> Any:
    fn = ch.unary_unary(method, request_serializer=type(request).SerializeToString,
                        response_deserializer=response_type.FromString)  # fmt: skip
    return fn(request, metadata=meta(token), timeout=10)


def admin_calls() -> Iterator[tuple[str, Any, Any]]:
    """Every method of the Admin service with a request naming this test's topic and group."""
    from google.protobuf import message_factory

    for m in ADMIN_SERVICE.methods:
        req = message_factory.GetMessageClass(m.input_type)()
        for name, value in (("topic", "telemetry"), ("group", "g-admin")):
            if name in m.input_type.fields_by_name:
                setattr(req, name, value)
        if "dry_run" in m.input_type.fields_by_name:
            req.dry_run = True
        if "to_earliest" in m.input_type.fields_by_name:
            req.to_earliest = True
        yield m.name, req, message_factory.GetMessageClass(m.output_type)


def expected(role: str, rpc: str) -> str:
    allowed = {
        "Publish": {"produce"},
        "JoinConsumer": {"consume"},
        "JoinProducer": {"produce"},
        "Metadata": set(ROLES),
    }.get(rpc) or ({"read", "admin"} if rpc in READ_METHODS else {"admin"})
    return OK if role in allowed else "PERMISSION_DENIED"


def calls_for(ch: grpc.Channel, token: str, role: str) -> dict[str, Callable[[], Any]]:
    """Every RPC of both services, made with `token`."""
    calls: dict[str, Callable[[], Any]] = {
        "Publish": lambda: publish(ch, token),
        "JoinConsumer": lambda: join(ch, token, f"g-{role}"),
        "JoinProducer": lambda: join(ch, token, f"p-{role}", role=pb.PRODUCER),
        "Metadata": lambda: unary(
            ch, "/walbroker.v1.Broker/Metadata", pb.MetadataRequest(), pb.MetadataResponse, token
        ),
    }
    for name, req, resp_type in admin_calls():
        path = f"/walbroker.v1.Admin/{name}"
        calls[name] = lambda p=path, r=req, t=resp_type: unary(ch, p, r, t, token)  # type: ignore[misc]
    return calls


def test_every_role_against_every_rpc(secured: BrokerProcess, creds: Credentials) -> None:
    with grpc.insecure_channel(secured.address) as ch:
        # The group has a committed offset, so describe and reset have something to do.
        assert outcome(lambda: join(ch, creds.tokens["root"], "g-admin")) == OK
        OTHER_ENDINGS.clear()
        results = {
            (role, rpc): outcome(fn, f"{role} {rpc}")
            for role in ROLES
            for rpc, fn in calls_for(ch, creds.tokens[f"only-{role}"], role).items()
        }
    wrong = {k: v for k, v in results.items() if v != expected(*k)}
    assert not wrong, f"role x rpc outcomes differ from the table: {wrong}; {OTHER_ENDINGS=}"
    assert len(results) == 4 * (4 + len(ADMIN_SERVICE.methods))


def test_denial_names_operation_and_resource_not_principals(
    secured: BrokerProcess, creds: Credentials
) -> None:
    with grpc.insecure_channel(secured.address) as ch, pytest.raises(grpc.RpcError) as err:
        join(ch, creds.tokens["only-read"], "collectors")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = err.value.details()
    assert "join consumer group" in details and "'telemetry'" in details
    assert "only-read" not in details and "root" not in details
    log = secured.log_text()
    assert re.search(r"call refused.*only-read", log) and "127.0.0.1" in log
    metrics = urllib.request.urlopen(secured.metrics_url, timeout=5).read().decode()
    assert 'gpu_telemetry_broker_auth_failures_total{reason="denied"}' in metrics


def test_unauthenticated(secured: BrokerProcess, creds: Credentials) -> None:
    with grpc.insecure_channel(secured.address) as ch:
        for token in (None, "gpt_not-a-token", ""):
            assert outcome(lambda t=token: publish(ch, t)) == "UNAUTHENTICATED"  # type: ignore[misc]
            assert outcome(lambda t=token: join(ch, t, "collectors")) == "UNAUTHENTICATED"  # type: ignore[misc]
        bad = ch.unary_unary("/walbroker.v1.Admin/ListTopics",
                             request_serializer=apb.ListTopicsRequest.SerializeToString,
                             response_deserializer=apb.ListTopicsResponse.FromString)  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            bad(apb.ListTopicsRequest(), metadata=[("authorization", "Basic abc")], timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health stays open.
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    metrics = urllib.request.urlopen(secured.metrics_url, timeout=5).read().decode()
    for reason in ("missing_token", "invalid_token", "malformed"):
        assert f'auth_failures_total{{reason="{reason}"}}' in metrics


def test_admin_calls_are_logged_and_counted_by_principal(
    secured: BrokerProcess, creds: Credentials
) -> None:
    with grpc.insecure_channel(secured.address) as ch:
        unary(ch, "/walbroker.v1.Admin/ListGroups", apb.ListGroupsRequest(),
              apb.ListGroupsResponse, creds.tokens["only-admin"])  # fmt: skip
    assert re.search(r"admin call.*ListGroups.*only-admin", secured.log_text())
    metrics = urllib.request.urlopen(secured.metrics_url, timeout=5).read().decode()
    assert re.search(
        r'admin_calls_total\{method="ListGroups",principal="only-admin"\} 1\.0', metrics
    )


def test_scopes(tmp_path: Path, broker_factory: Callable[..., BrokerProcess]) -> None:
    creds = Credentials(tmp_path / "creds")
    creds.add("root", "produce,consume,read,admin")
    creds.add("collector", "consume,produce", "consume:topic=telemetry",
              "consume:group=collectors", "produce:topic=telemetry.dlq")  # fmt: skip
    creds.add("viewer", "read", "group=coll*", "topic=tele*")
    b = broker_factory(
        "--partitions", "2", "--auto-create-topics", *creds.broker_args(tls=False)
    ).start()
    root = creds.tokens["root"]
    with grpc.insecure_channel(b.address) as ch:
        for topic in ("telemetry", "telemetry.dlq", "secret"):
            publish(ch, root, topic)
        join(ch, root, "other")
        tok = creds.tokens["collector"]
        assert outcome(lambda: join(ch, tok, "collectors")) == OK
        assert outcome(lambda: join(ch, tok, "other")) == "PERMISSION_DENIED"
        assert outcome(lambda: join(ch, tok, "collectors", topic="secret")) == "PERMISSION_DENIED"
        assert outcome(lambda: publish(ch, tok, "telemetry.dlq")) == OK
        assert outcome(lambda: publish(ch, tok, "telemetry")) == "PERMISSION_DENIED"
        md = unary(ch, "/walbroker.v1.Broker/Metadata", pb.MetadataRequest(),
                   pb.MetadataResponse, tok)  # fmt: skip
        assert sorted(t.name for t in md.topics) == ["telemetry", "telemetry.dlq"]
        assert outcome(lambda: unary(ch, "/walbroker.v1.Broker/Metadata",
                                     pb.MetadataRequest(topics=["secret"]),
                                     pb.MetadataResponse, tok)) == "PERMISSION_DENIED"  # fmt: skip
        view = creds.tokens["viewer"]
        groups = unary(ch, "/walbroker.v1.Admin/ListGroups", apb.ListGroupsRequest(),
                       apb.ListGroupsResponse, view)  # fmt: skip
        all_groups = unary(ch, "/walbroker.v1.Admin/ListGroups", apb.ListGroupsRequest(),
                           apb.ListGroupsResponse, root)  # fmt: skip
        assert {g.name for g in all_groups.groups} >= {"collectors", "other"}
        assert {g.name for g in groups.groups} == {"collectors"}
        denied = lambda: unary(ch, "/walbroker.v1.Admin/DescribeGroup",  # noqa: E731
                               apb.DescribeGroupRequest(group="other"),
                               apb.DescribeGroupResponse, view)  # fmt: skip
        assert outcome(denied) == "PERMISSION_DENIED"
        topics = unary(ch, "/walbroker.v1.Admin/ListTopics", apb.ListTopicsRequest(),
                       apb.ListTopicsResponse, view)  # fmt: skip
        assert sorted(t.name for t in topics.topics) == ["telemetry", "telemetry.dlq"]


def _write_keeping_stamp(path: Path, text: str) -> None:
    """Rewrite a file in place so that size and mtime look unchanged (only SIGHUP notices)."""
    st = os.stat(path)
    assert len(text.encode()) == st.st_size
    with open(path, "r+", encoding="utf-8") as f:
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_rotation_and_revocation_without_restart(
    creds: Credentials, broker_factory: Callable[..., BrokerProcess]
) -> None:
    b = broker_factory(
        "--partitions", "2", "--auto-create-topics", *creds.broker_args(tls=False)
    ).start()
    pid = b.proc.pid if b.proc else 0
    old = creds.tokens["only-produce"]
    with grpc.insecure_channel(b.address) as ch:
        assert outcome(lambda: publish(ch, old)) == OK
        # An open stream under the old token, to be cut when the token is revoked.
        stream = Producer(b.address, "telemetry", lambda xs: b"x" * len(xs),
                          security=creds.client("only-produce", tls=False)).start()  # fmt: skip
        stream.send("gpu", 1)
        stream.flush(10)
        # Rotate: add a second token for the same principal; both work.
        new = creds.add("only-produce", "produce")
        assert wait_until(lambda: outcome(lambda: publish(ch, new)) == OK, 10)
        assert outcome(lambda: publish(ch, old)) == OK
        # Revoke the old one: its next call and its open stream are refused.
        creds.lines = [ln for ln in creds.lines if hash_token(old) not in ln]
        creds.save()
        assert wait_until(lambda: outcome(lambda: publish(ch, old)) == "UNAUTHENTICATED", 10)
        assert outcome(lambda: publish(ch, new)) == OK
        stream.send("gpu", 2)
        with pytest.raises(Unauthenticated):
            stream.flush(15)
        with contextlib.suppress(Unauthenticated):
            stream.close(timeout_s=1)
        # SIGHUP: a change that the file's size, mtime and inode do not show.
        later = new_token()
        text = creds.token_file.read_text()
        _write_keeping_stamp(creds.token_file, text.replace(hash_token(new), hash_token(later)))
        time.sleep(2.5)  # longer than the broker's file check interval: no change seen
        assert outcome(lambda: publish(ch, later)) == "UNAUTHENTICATED"
        assert b.proc is not None
        b.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: outcome(lambda: publish(ch, later)) == OK, 10)
        assert outcome(lambda: publish(ch, new)) == "UNAUTHENTICATED"
    assert b.proc.pid == pid and b.running, "the broker was not restarted"


@pytest.mark.parametrize("auth", [False, True])
def test_non_loopback_listen_without_auth_and_tls_is_refused(
    tmp_path: Path, creds: Credentials, auth: bool
) -> None:
    args = ["--auth-tokens", str(creds.token_file)] if auth else []
    proc = subprocess.run(
        [sys.executable, "-m", "walbroker.cli", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen", f"0.0.0.0:{free_port()}", "--metrics-listen", "", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    missing = "TLS" if auth else "authentication and TLS"
    assert "refuses to listen on 0.0.0.0:" in proc.stderr and f"without {missing}" in proc.stderr
    assert "--insecure" in proc.stderr


def test_exposure_rule(caplog: pytest.LogCaptureFixture) -> None:
    from walbroker.security import ExposureError, check_exposure, is_loopback

    assert is_loopback("127.0.0.1:7070") and is_loopback("[::1]:7070")
    assert is_loopback("localhost:7070") and is_loopback("unix:/run/gputel.sock")
    assert not is_loopback("0.0.0.0:7070") and not is_loopback("[::]:7070")
    assert not is_loopback(":7070") and not is_loopback("10.1.2.3:7070")
    check_exposure("walbroker", "127.0.0.1:1", False, False, False)  # zero-config loopback
    check_exposure("walbroker", "0.0.0.0:1", True, True, False)  # auth + TLS
    with pytest.raises(ExposureError):
        check_exposure("walbroker", "0.0.0.0:1", False, True, False)
    with caplog.at_level("WARNING"):
        check_exposure("walbroker", "0.0.0.0:1", False, False, True)
    assert "INSECURE" in caplog.text


def test_client_token_rotation_keeps_an_open_stream_going(
    creds: Credentials, broker_factory: Callable[..., BrokerProcess]
) -> None:
    """Rotate as docs/security.md says: add the new token, hand it to the client, revoke the
    old one. The client's open stream is cut by the revocation and resumes with the new token
    read from its file: nothing fails, nothing is lost or stored twice."""
    b = broker_factory("--topic", "telemetry:2", *creds.broker_args(tls=False)).start()
    sec = creds.client("only-produce", tls=False)
    old = creds.tokens["only-produce"]
    p = Producer(b.address, "telemetry", lambda xs: b"x" * len(xs), security=sec).start()
    try:
        for i in range(100):
            p.send(f"gpu-{i % 7}", i)
        p.flush(10)
        new = creds.add("only-produce", "produce")
        creds.token_path("only-produce")  # the client's file now holds the new token
        creds.lines = [ln for ln in creds.lines if hash_token(old) not in ln]
        creds.save()
        with grpc.insecure_channel(b.address) as ch:
            assert wait_until(lambda: outcome(lambda: publish(ch, old)) == "UNAUTHENTICATED", 10)
            assert outcome(lambda: publish(ch, new)) == OK
        for i in range(100, 200):
            p.send(f"gpu-{i % 7}", i)
        p.flush(30)
        assert p.stats.acked_points == 200 and p.stats.failed_points == 0
        assert p.stats.reconnects >= 1, "the stream under the old token should have been cut"
    finally:
        p.close(timeout_s=5)


def test_a_flood_of_refusals_is_counted_but_not_logged_line_by_line(
    secured: BrokerProcess,
) -> None:
    def failures() -> float:
        text = urllib.request.urlopen(secured.metrics_url, timeout=5).read().decode()
        m = re.search(r'auth_failures_total\{reason="missing_token"\} (\S+)', text)
        return float(m.group(1)) if m else 0.0

    before, lines_before = failures(), secured.log_text().count("call refused")
    with grpc.insecure_channel(secured.address) as ch:
        for _ in range(300):
            assert outcome(lambda: unary(ch, "/walbroker.v1.Broker/Metadata",
                                         pb.MetadataRequest(), pb.MetadataResponse, None)) == (
                "UNAUTHENTICATED"
            )  # fmt: skip
        time.sleep(0.1)
        outcome(lambda: publish(ch, None))  # one more, after the interval: logged with the sum
    assert failures() - before == 301
    logged = secured.log_text().count("call refused") - lines_before
    assert 1 <= logged < 100, logged
    assert re.search(r'"suppressed": [1-9]', secured.log_text())


def _auth_failures(url: str, reason: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    m = re.search(rf'auth_failures_total\{{reason="{reason}"\}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


class _Receiver:
    """A Consume stream that sends its join and nothing more, and only receives."""

    def __init__(self, address: str, token: str, group: str) -> None:
        self.points: list[tuple[float, int]] = []
        self.ended: tuple[grpc.StatusCode, str] | None = None
        self.assigned = threading.Event()
        self._quiet = threading.Event()
        self._channel = grpc.insecure_channel(address)
        call = self._channel.stream_stream(
            "/walbroker.v1.Broker/Consume",
            request_serializer=pb.ConsumeRequest.SerializeToString,
            response_deserializer=pb.ConsumeResponse.FromString,
        )
        join = pb.Join(group=group, topic="telemetry", role=pb.CONSUMER,
                       credit_points=100_000, session_timeout_ms=60_000)  # fmt: skip

        def requests() -> Iterator[pb.ConsumeRequest]:
            yield pb.ConsumeRequest(join=join)
            self._quiet.wait(60)  # no heartbeat, no commit: nothing for the request side to check

        self.call = call(requests(), metadata=meta(token), timeout=60)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                if resp.WhichOneof("kind") == "assignment":
                    self.assigned.set()
                elif resp.WhichOneof("kind") == "records":
                    self.points.append((time.monotonic(), resp.records.count))
        except grpc.RpcError as exc:
            self.ended = (exc.code(), exc.details() or "")

    def close(self) -> None:
        self._quiet.set()
        self.call.cancel()
        self._reader.join(10)
        self._channel.close()


@pytest.mark.parametrize(
    ("change", "code"),
    [("revoke", grpc.StatusCode.UNAUTHENTICATED), ("rescope", grpc.StatusCode.PERMISSION_DENIED)],
)
def test_a_consumer_that_only_receives_stops_receiving_when_its_token_is_revoked(
    tmp_path: Path, broker_factory: Callable[..., BrokerProcess], change: str, code: Any
) -> None:
    """docs/security.md: "calls and open streams with the old token end UNAUTHENTICATED". A
    consumer that sent nothing after its join kept receiving telemetry after its token was
    revoked (only requests were re-checked) until its session ended."""
    creds = Credentials(tmp_path / "creds")
    cons = creds.add("cons", "consume", "topic=telemetry", "group=cg")
    creds.add("prod", "produce", "topic=telemetry")
    b = broker_factory("--topic", "telemetry:1", *creds.broker_args(tls=False)).start()
    producer = Producer(b.address, "telemetry", lambda xs: b"x" * len(xs),
                        security=creds.client("prod", tls=False)).start()  # fmt: skip
    receiver = _Receiver(b.address, cons, "cg")
    try:
        assert receiver.assigned.wait(10)
        producer.send("gpu", 1)
        producer.flush(10)
        assert wait_until(lambda: sum(n for _, n in receiver.points) == 1, 10)
        before = _auth_failures(b.metrics_url, "invalid_token" if change == "revoke" else "denied")
        if change == "revoke":
            creds.lines = [ln for ln in creds.lines if hash_token(cons) not in ln]
        else:  # the principal stays, its group scope moves elsewhere
            creds.lines = [ln.replace("group=cg", "group=other") for ln in creds.lines]
        creds.save()
        time.sleep(1.5)  # past the broker's file check interval
        revoked_at = time.monotonic()
        for i in range(10):
            producer.send("gpu", i)
            producer.flush(10)
        assert wait_until(lambda: receiver.ended is not None, 10), "the stream was not ended"
        after = sum(n for t, n in receiver.points if t > revoked_at)
        assert after == 0, f"{after} points delivered after the revocation"
        assert receiver.ended is not None and receiver.ended[0] == code, receiver.ended
        reason = "invalid_token" if change == "revoke" else "denied"
        assert _auth_failures(b.metrics_url, reason) - before == 1
    finally:
        receiver.close()
        producer.close(timeout_s=5)
