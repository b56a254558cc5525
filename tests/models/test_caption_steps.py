"""Continuous batching of the real captioner: step-by-step decoding, with requests joining and
leaving mid-flight, gives the captions and scores of batch-at-once decoding."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from export.data.scenes import render_scenes
from service.batching.iteration import StepBatcher, StepModel
from service.runtime.kernels import Caption, Captioner

FRESH_SEED = 20_240_917
"""Scenes rendered for this test only: no split of the export pipeline uses this seed."""


@pytest.fixture(scope="module")
def captioner(specs) -> Captioner:
    return Captioner(specs["captioner"], "cpu", 1)


@pytest.fixture(scope="module")
def scenes(specs) -> np.ndarray:
    fresh = render_scenes(24, seed=FRESH_SEED).images
    return np.concatenate([specs["captioner"].heldout()["image"][:24], fresh])


def batch_at_once(captioner: Captioner, images: np.ndarray, beam: int) -> list[Caption]:
    return captioner.run(beam, list(images))


def assert_same(got: list[Caption], want: list[Caption]) -> None:
    assert [c.text for c in got] == [c.text for c in want]
    np.testing.assert_allclose([c.score for c in got], [c.score for c in want], atol=1e-4)


def test_the_captioner_is_a_step_model(captioner) -> None:
    assert isinstance(captioner, StepModel)
    assert [captioner.rows(k) for k in (0, 1, 3, 8)] == [1, 1, 3, 8]


@pytest.mark.parametrize("beam", [1, 3])
def test_a_running_set_fed_mid_flight_equals_batch_at_once(captioner, scenes, beam) -> None:
    want = batch_at_once(captioner, scenes, beam)
    running = captioner.running()
    got: dict[int, Caption] = {}
    arrivals = iter(range(len(scenes)))
    steps = 0
    while len(got) < len(scenes):
        for _ in range(3):  # three newcomers before every step, until all have come
            index = next(arrivals, None)
            if index is not None:
                running.join(beam, [index], [scenes[index]])
        got.update(running.step())
        steps += 1
    assert running.rows == 0
    assert steps < len(scenes) * 12  # sequences shared steps
    assert_same([got[i] for i in range(len(scenes))], want)


def test_greedy_and_beam_share_steps_and_leave_in_any_order(captioner, scenes) -> None:
    widths = [1, 3, 5, 1, 3, 2] * 8
    expected: dict[int, Caption] = {}
    for width in set(widths):
        rows = [i for i, w in enumerate(widths) if w == width]
        for index, caption in zip(rows, batch_at_once(captioner, scenes[rows], width)):
            expected[index] = caption
    running = captioner.running()
    got: dict[int, Caption] = {}
    order = []
    for index in range(len(widths)):
        running.join(widths[index], [index], [scenes[index]])
        if index % 4 == 3:  # the caller of the one that joined a step ago went away
            running.leave([index - 1])
            del expected[index - 1]
        for done, caption in running.step():
            got[done] = caption
            order.append(done)
    while running.rows:
        for done, caption in running.step():
            got[done] = caption
            order.append(done)
    assert sorted(got) == sorted(expected)
    assert order != sorted(order)  # short captions overtook long ones
    assert_same([got[i] for i in sorted(got)], [expected[i] for i in sorted(got)])


def test_the_step_batcher_with_staggered_mixed_requests_equals_batch_at_once(
    captioner, scenes
) -> None:
    beams = [1, 3] * (len(scenes) // 2)
    expected: dict[int, Caption] = {}
    for beam in (1, 3):
        rows = [i for i, b in enumerate(beams) if b == beam]
        expected.update(zip(rows, batch_at_once(captioner, scenes[rows], beam)))

    async def scenario() -> list[Caption]:
        batcher = StepBatcher(
            "captioner", captioner, max_rows=24, max_join=4, workers=2, max_queue=100
        )
        await batcher.start()
        try:

            async def one(index: int) -> Caption:
                await asyncio.sleep(0.002 * index)  # arrivals spread over the decoding
                return await batcher.submit(scenes[index], beams[index])

            results = await asyncio.gather(*(one(i) for i in range(len(scenes))))
            assert batcher.stats.steps > 0 and batcher.stats.samples == len(scenes)
            assert batcher.stats.largest_step <= 24
            return results
        finally:
            await batcher.stop()

    got = asyncio.run(scenario())
    assert_same(got, [expected[i] for i in range(len(scenes))])
