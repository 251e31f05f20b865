"""The streamers' progress belongs to one source: `gputel-up` starts it over when that changes.

The streamers' producer group (`streamers`) keeps, in the broker's log, how many rows of each
partition were sent across passes (`streamer.ownership`), so a restarted `make run` resumes
where it stopped. That progress only means something for the file, the passes and the time
mode it was counted with: after `make run` had looped over the sample, `gputel-up --csv
export.csv --passes 1 --time source` found progress far past one pass and sent nothing at all.

So each run records what its streamers read (`DATA_DIR/streamers-source.json`: the CSV's
resolved path, size and modification time, `--passes`, `--time`, the scrape demo) and, when
that differs from the previous run's record, or no record exists while the group does (a data
directory from before this file), deletes the group's progress before any streamer starts —
the admin CLI's `delete-group streamers`. The same command as last time resumes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from walbroker.client import channel, error_from_rpc
from walbroker.credentials import ClientSecurity
from walbroker.errors import NotFound

if TYPE_CHECKING:  # gputel.secure needs `cryptography`: imported only with --secure
    from gputel.secure import SecureSetup

GROUP = "streamers"
FILE = "streamers-source.json"


def stamp(a: argparse.Namespace, csv: Path) -> dict[str, object]:
    """What the streamers of this run read, as far as their progress depends on it."""
    info = csv.stat()
    return {
        "csv": str(csv.resolve()),
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "passes": a.passes,
        "time": a.time,
        "scrape_demo": a.scrape_demo,
    }


def previous(data_dir: Path) -> dict[str, object] | None:
    """The last run's stamp (None when there is none or it is unreadable)."""
    try:
        doc = json.loads((data_dir / FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def delete_group(address: str, security: ClientSecurity | None, timeout_s: float = 10.0) -> int:
    """Delete the streamers' group on the broker: the number of progress entries removed."""
    ch = channel(address, security)
    try:
        resp = apb_grpc.AdminStub(ch).DeleteGroup(
            apb.DeleteGroupRequest(group=GROUP), timeout=timeout_s
        )
        return int(resp.offsets_deleted)
    except grpc.RpcError as exc:
        err = error_from_rpc(exc, ch)
        if isinstance(err, NotFound):
            return 0
        raise err from None
    finally:
        ch.close()


def reconcile(
    a: argparse.Namespace,
    csv: Path,
    forget: Callable[[], int],
    say: Callable[[str], None],
) -> None:
    """Start the streamers' progress over when their source changed; record this run's.

    `forget` deletes the group (BrokerError when the broker refuses); `say` tells the user."""
    now, before = stamp(a, csv), previous(a.data_dir)
    if now != before:
        removed = forget()
        if removed:
            what = _what(before, now)
            say(
                f"gputel-up: the streamers' source changed since the last run ({what}): "
                f"their progress ({removed} partition(s)) starts over"
            )
    (a.data_dir / FILE).write_text(json.dumps(now, indent=1) + "\n")


def _what(before: dict[str, object] | None, now: dict[str, object]) -> str:
    if before is None:
        return "no record of it"
    keys = ("csv", "passes", "time", "scrape_demo")
    what = [f"{k} {before.get(k)!r} -> {now[k]!r}" for k in keys if before.get(k) != now[k]]
    edited = any(before.get(k) != now[k] for k in ("size", "mtime_ns"))
    if before.get("csv") == now["csv"] and edited:
        what.append(f"{now['csv']} was modified")
    return ", ".join(what)


def on_broker(
    a: argparse.Namespace, csv: Path, tls: SecureSetup | None, say: Callable[[str], None]
) -> None:
    """`reconcile` against the local broker of `gputel-up` (as its admin with --secure)."""
    security = ClientSecurity.build(**tls.client_files("admin")) if tls else None
    address = f"127.0.0.1:{a.broker_port}"
    reconcile(a, csv, lambda: delete_group(address, security), say)
