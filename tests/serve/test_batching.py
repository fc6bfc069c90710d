"""The Encoder's batcher on its own (plain asyncio): which requests end up in which batch."""

from __future__ import annotations

import asyncio

import pytest

from serve._batching import Batcher

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """A batch function that records its batches and, while `gate` is closed, holds them (a busy encoder)."""

    def __init__(self, fail_key: str | None = None):
        self.batches: list[tuple[str, list]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = self.most_running = 0
        self.fail_key = fail_key

    async def __call__(self, key: str, items: list) -> list:
        self.batches.append((key, list(items)))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
            if key == self.fail_key:
                raise RuntimeError(f"cannot run {key}")
            return [f"{key}:{item}" for item in items]
        finally:
            self.running -= 1


async def settle() -> None:
    """Let every ready task run until they all wait on something."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_free_slot_takes_everything_that_queued_while_busy():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch_size=4, wait_s=0, slots=1)
        run.gate.clear()
        first = asyncio.create_task(batcher.submit("m", 0))
        await settle()
        assert run.batches == [("m", [0])]  # idle: the first request did not wait for company
        rest = [asyncio.create_task(batcher.submit("m", i)) for i in range(1, 11)]
        await settle()
        assert len(run.batches) == 1  # busy: the others queue instead of forming small batches
        run.gate.set()
        results = await asyncio.gather(first, *rest)
        assert results == [f"m:{i}" for i in range(11)]
        assert run.batches == [("m", [0]), ("m", [1, 2, 3, 4]), ("m", [5, 6, 7, 8]), ("m", [9, 10])]
        assert (batcher.batches, batcher.largest_batch) == (4, 4)

    asyncio.run(scenario())


def test_batches_hold_one_key_and_the_oldest_request_goes_first():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch_size=8, wait_s=0, slots=1)
        run.gate.clear()
        tasks = [asyncio.create_task(batcher.submit("busy", -1))]
        await settle()
        for key, item in [("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)]:
            tasks.append(asyncio.create_task(batcher.submit(key, item)))
        await settle()
        run.gate.set()
        results = await asyncio.gather(*tasks)
        assert results == ["busy:-1", "b:1", "a:2", "b:3", "c:4", "a:5"]
        assert run.batches == [("busy", [-1]), ("b", [1, 3]), ("a", [2, 5]), ("c", [4])]

    asyncio.run(scenario())


def test_an_idle_batch_waits_for_company_until_full():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch_size=3, wait_s=60, slots=1)  # full long before the wait is over
        tasks = []
        for i in range(3):
            tasks.append(asyncio.create_task(batcher.submit("m", i)))
            await settle()
        assert await asyncio.gather(*tasks) == ["m:0", "m:1", "m:2"]
        assert run.batches == [("m", [0, 1, 2])]

    asyncio.run(scenario())


def test_an_idle_batch_goes_alone_once_the_wait_is_over():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch_size=8, wait_s=0.05, slots=1)
        assert await batcher.submit("m", 0) == "m:0"
        assert run.batches == [("m", [0])]

    asyncio.run(scenario())


def test_slots_run_batches_side_by_side():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch_size=8, wait_s=0, slots=2)
        run.gate.clear()
        tasks = [asyncio.create_task(batcher.submit("m", 0))]
        await settle()
        tasks += [asyncio.create_task(batcher.submit("m", i)) for i in (1, 2)]
        await settle()
        assert run.batches == [("m", [0]), ("m", [1, 2])] and run.running == 2  # the second slot took the rest
        tasks.append(asyncio.create_task(batcher.submit("m", 3)))
        await settle()
        assert len(run.batches) == 2  # no third batch while both slots are busy
        run.gate.set()
        assert await asyncio.gather(*tasks) == ["m:0", "m:1", "m:2", "m:3"]
        assert run.most_running == 2

    asyncio.run(scenario())


def test_a_failed_batch_fails_its_requests_only():
    async def scenario():
        run = Recorder(fail_key="broken")
        batcher = Batcher(run, max_batch_size=8, wait_s=0, slots=1)
        run.gate.clear()
        tasks = [asyncio.create_task(batcher.submit("ok", 0))]
        await settle()
        tasks += [asyncio.create_task(batcher.submit(key, i)) for i, key in enumerate(["broken", "broken", "ok"], 1)]
        await settle()
        run.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[0] == "ok:0" and results[3] == "ok:3"
        assert all(isinstance(r, RuntimeError) and "cannot run broken" in str(r) for r in results[1:3])
        assert await batcher.submit("ok", 4) == "ok:4"  # and it goes on batching

    asyncio.run(scenario())


def test_a_cancelled_request_is_not_run():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch_size=8, wait_s=0, slots=1)
        run.gate.clear()
        first = asyncio.create_task(batcher.submit("m", 0))
        await settle()
        gone = asyncio.create_task(batcher.submit("m", 1))
        kept = asyncio.create_task(batcher.submit("m", 2))
        await settle()
        gone.cancel()  # its client went away while it waited
        await settle()
        run.gate.set()
        assert await asyncio.gather(first, kept) == ["m:0", "m:2"]
        assert run.batches == [("m", [0]), ("m", [2])]
        assert batcher.queues == {}  # nothing left behind

    asyncio.run(scenario())


def test_free_slots_share_the_waiting_requests_by_size():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch_size=8, wait_s=0, slots=2, size=len)
        run.gate.clear()
        requests = [["a"] * 8, ["b"], ["c"] * 3, ["d"] * 4]  # 16 texts waiting before any slot looks
        tasks = [asyncio.create_task(batcher.submit("m", r)) for r in requests]
        await settle()
        # Both slots free: the first takes the oldest requests until it holds half the texts (8 of 16), the second the rest.
        assert [items for _, items in run.batches] == [requests[:1], requests[1:]]
        assert run.running == 2
        run.gate.set()
        assert await asyncio.gather(*tasks) == [f"m:{r}" for r in requests]

        # One slot busy: a freed slot takes everything that waits (up to max_batch_size), as before.
        run.batches.clear()
        run.gate.clear()
        busy = asyncio.create_task(batcher.submit("m", ["x"]))
        await settle()
        waiting = [asyncio.create_task(batcher.submit("m", [str(i)] * (i + 1))) for i in range(3)]
        await settle()
        assert [len(items) for _, items in run.batches] == [1, 3]
        run.gate.set()
        await asyncio.gather(busy, *waiting)

    asyncio.run(scenario())


def test_only_cancelled_requests_waiting_leaves_nothing_behind():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_batch_size=8, wait_s=0.05, slots=1)
        gone = asyncio.create_task(batcher.submit("m", 0))
        await settle()
        gone.cancel()  # before its batch formed: no batch is run for it, and the batcher does not spin on it
        await asyncio.sleep(0.1)
        assert run.batches == [] and batcher.queues == {}
        assert await batcher.submit("m", 1) == "m:1"

    asyncio.run(scenario())
