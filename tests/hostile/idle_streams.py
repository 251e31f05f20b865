"""A hostile client in its own process: opens N Publish streams that never send anything.

`python -m tests.hostile.idle_streams ADDRESS N` starts the calls, waits two
seconds and prints one line: `open N refused R DETAIL` (R calls the broker ended
at once, with the status DETAIL of the first); it holds the rest until its stdin
closes. grpc.aio keeps them all on one
event loop, so 1,000 idle streams cost this process no thread each.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc

CHANNELS = 10


async def _never(stop: asyncio.Event) -> AsyncIterator[pb.PublishRequest]:
    await stop.wait()
    return
    yield  # an async generator that sends nothing


async def _hold(call: grpc.aio.StreamStreamCall) -> str:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    except asyncio.CancelledError:
        pass
    return ""


async def main(address: str, n: int) -> None:
    stop = asyncio.Event()
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    calls = [pb_grpc.BrokerStub(channels[i % CHANNELS]).Publish(_never(stop)) for i in range(n)]
    holders = [asyncio.create_task(_hold(c)) for c in calls]
    await asyncio.sleep(2.0)
    ended = [h.result() for h in holders if h.done()]
    first = next((e for e in ended if e), "-")
    print(f"open {n} refused {len(ended)} {first}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    for c in calls:
        c.cancel()
    await asyncio.gather(*holders)
    for ch in channels:
        await ch.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
