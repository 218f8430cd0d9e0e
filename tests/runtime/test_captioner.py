"""The id-keyed captioner: one record per id, in order, a bad image among good ones costing only itself."""

from __future__ import annotations

import pytest

from moai_edge.engines.errors import InputError
from moai_edge.runtime import Captioner, Pipeline
from moai_edge.runtime.samples import sample_image


@pytest.fixture(scope="module")
def pipe(tiny_packages):
    with Pipeline.load(tiny_packages["collavo"], threads=1) as p:
        yield p


@pytest.mark.parametrize("batch_size", [1, 3])
def test_records_come_back_in_id_order_with_the_bad_image_as_an_error(pipe, batch_size):
    ids = ["zeta", "alpha", "broken", "mid", "last"]
    images = [sample_image(size=90, seed=s) for s in range(2)] + [b"\x89PNG not really"] + \
             [sample_image(size=90, seed=s) for s in (2, 3)]
    captioner = Captioner(pipe, batch_size=batch_size, decoding=pipe.decoding("greedy", max_new_tokens=3))
    seen = []
    records = captioner.caption(ids, images, on_record=seen.append)
    assert [r.id for r in records] == ids == [r.id for r in seen]
    assert records[2].error and "broken" in records[2].error and records[2].caption is None
    assert all(r.caption is not None and r.error is None for i, r in enumerate(records) if i != 2)
    alone = pipe.ask(images[3], captioner.question, decoding=captioner.decoding)
    assert records[3].caption == alone.answer  # batched with others (or not), the same caption


def test_ids_and_images_must_pair_up(pipe):
    with pytest.raises(InputError, match="one id per image"):
        Captioner(pipe).caption(["a", "b"], [sample_image(size=64)])
