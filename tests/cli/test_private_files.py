"""gputel.pki.write_private: owner-only files that readers never see half-written."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from gputel.pki import write_private


def test_an_existing_world_readable_file_becomes_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "broker.key"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new secret\n")
    assert path.read_text() == "new secret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["broker.key"]  # no temporary file left


def test_a_reader_never_sees_an_empty_or_partial_file(tmp_path: Path) -> None:
    """The rogue-collector test once read `streamer.token` empty while it was being rewritten."""
    path = tmp_path / "streamer.token"
    token = "t" * 4096 + "\n"
    write_private(path, token)
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=read, name="token-reader")
    reader.start()
    try:
        for _ in range(300):
            write_private(path, token)
    finally:
        done.set()
        reader.join()
    assert seen == {token}
