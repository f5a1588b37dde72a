"""asyncio: connect, subscribe, `async for`, acknowledgements, cancellation safety."""

import asyncio

import pytest

import walbrook
from conftest import SUBJECT_ROOT


def test_async_iteration_acks_and_cancellation_lose_nothing(db):
    db.sql("INSERT INTO aio SELECT g, 'v' || g FROM generate_series(1, 3) g")

    async def main():
        client = await walbrook.Client.connect_async(
            db.servers.nats_url, db.name, root=SUBJECT_ROOT
        )
        await client.delete_durable_async("py-async")
        got = []
        async with await client.subscribe_async(
            "public.aio", durable="py-async", ack_wait=2.0
        ) as sub:
            async for event in sub:
                got.append(event)
                await event.ack_async()
                if len(got) == 3:
                    break
            # Nothing more: a timed-out wait is cancelled mid-flight...
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sub.__anext__(), 0.5)
            # ...and the event that arrives afterwards is not lost with it.
            db.sql("INSERT INTO aio VALUES (4, 'v4')")
            await asyncio.sleep(1.0)  # the cancelled wait receives it first
            fourth = await asyncio.wait_for(sub.next_async(), 20)
            assert fourth.after == {"id": 4, "v": "v4"}
            await fourth.ack_async()
            assert await sub.next_async(timeout=0.3) is None

        # Other tasks run while a subscription waits (the loop is not blocked).
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        sub = await client.subscribe_async("public.aio", start="new")
        assert await sub.next_async(timeout=0.5) is None
        task.cancel()
        assert ticks >= 10

        # Resuming the durable consumer: everything was acknowledged.
        sub = await client.subscribe_async("public.aio", durable="py-async")
        assert await sub.next_async(timeout=1.0) is None

        schema = await client.schema_async(got[0].fingerprint)
        assert schema.table == "public.aio"
        other = await walbrook.Client.connect_async(
            db.servers.nats_url, "nope", root=SUBJECT_ROOT
        )
        with pytest.raises(walbrook.StreamNotFoundError):
            await other.subscribe_async("*")
        assert await client.delete_durable_async("py-async") is True
        return got

    got = asyncio.run(main())
    assert [(e.op, e.after["id"]) for e in got] == [("insert", 1), ("insert", 2), ("insert", 3)]


def test_async_connect_errors_are_exceptions(db):
    async def main():
        with pytest.raises(walbrook.ConnectError):
            await walbrook.Client.connect_async("nats://127.0.0.1:1", "x", connect_timeout=1.0)

    asyncio.run(main())
