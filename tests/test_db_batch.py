"""headrace.db.batch.Batcher: submissions made while a batch runs share the next call, results go back to
their own callers in order, and an item whose batch fails is run alone so that only a bad item fails."""

from __future__ import annotations

import asyncio

import pytest

from headrace.db.batch import Batcher

pytestmark = pytest.mark.db_independent("no database")


def test_items_submitted_together_share_one_call_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    async def main() -> list[int]:
        b: Batcher[int, int] = Batcher(run)
        return list(await asyncio.gather(*(b.submit(i) for i in range(5))))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert calls == [[0, 1, 2, 3, 4]]


def test_items_submitted_while_a_batch_runs_go_in_the_next_in_order() -> None:
    calls: list[list[int]] = []

    async def main() -> list[int]:
        release = asyncio.Event()

        async def run(items: list[int]) -> list[int]:
            calls.append(items)
            if len(calls) == 1:
                await release.wait()
            return items

        b: Batcher[int, int] = Batcher(run, limit=3)
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0)  # the first batch is running, holding [0]
        later = [asyncio.ensure_future(b.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        release.set()
        return list(await asyncio.gather(first, *later))

    assert asyncio.run(main()) == [0, 1, 2, 3, 4, 5]
    assert calls == [[0], [1, 2, 3], [4, 5]]


def test_a_failing_batch_is_run_item_by_item_and_only_the_bad_item_fails() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        if 13 in items:
            raise ValueError("13 is refused")
        return items

    async def main() -> list[object]:
        b: Batcher[int, int] = Batcher(run)
        return list(await asyncio.gather(*(b.submit(i) for i in (1, 13, 2)), return_exceptions=True))

    out = asyncio.run(main())
    assert out[0] == 1 and out[2] == 2
    assert isinstance(out[1], ValueError) and str(out[1]) == "13 is refused"
    assert calls == [[1, 13, 2], [1], [13], [2]]
