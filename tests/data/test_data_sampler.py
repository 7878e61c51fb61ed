"""ResumableSampler and MixtureSampler: deterministic epochs, exact resume, weighted token shares."""

from __future__ import annotations

import json
from itertools import islice

import pytest

from plmkit.data import MixtureSampler, ResumableSampler
from plmkit.errors import ConfigError


def batches(sampler, n: int) -> list:
    return list(islice(iter(sampler), n))


def test_every_epoch_is_a_fresh_permutation_of_full_batches():
    sampler = ResumableSampler(10, batch_size=3, seed=0)
    assert sampler.batches_per_epoch == 3
    got = batches(sampler, 9)
    epochs = [sum(got[i : i + 3], []) for i in (0, 3, 6)]
    for items in epochs:
        assert len(set(items)) == 9 and set(items) <= set(range(10))  # one item left out per epoch
    assert epochs[0] != epochs[1] != epochs[2]
    assert sampler.epoch == 2
    assert batches(ResumableSampler(10, 3, seed=0), 9) == got  # same seed, same order
    assert batches(ResumableSampler(10, 3, seed=1), 3) != got[:3]


def test_no_shuffle_and_short_last_batch():
    sampler = ResumableSampler(7, batch_size=3, shuffle=False, drop_last=False)
    assert batches(sampler, 4) == [[0, 1, 2], [3, 4, 5], [6], [0, 1, 2]]


@pytest.mark.parametrize("stop", [1, 3, 5, 7])  # 5 batches per epoch: 5 stops at the boundary
def test_resume_gives_the_exact_next_batches(stop):
    uninterrupted = batches(ResumableSampler(11, batch_size=2, seed=3), 20)
    first = ResumableSampler(11, batch_size=2, seed=3)
    assert batches(first, stop) == uninterrupted[:stop]
    state = json.loads(json.dumps(first.state_dict()))  # plain data: survives any checkpoint format
    resumed = ResumableSampler(11, batch_size=2, seed=3)
    resumed.load_state_dict(state)
    assert batches(resumed, 20 - stop) == uninterrupted[stop:]


def test_resume_across_the_epoch_boundary():
    uninterrupted = batches(ResumableSampler(8, batch_size=4, seed=0), 6)  # 2 batches per epoch
    first = ResumableSampler(8, batch_size=4, seed=0)
    batches(first, 2)  # the epoch is used up; the next batch starts epoch 1
    assert first.state_dict()["epoch"] == 0 and first.state_dict()["position"] == 8
    resumed = ResumableSampler(8, batch_size=4, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert batches(resumed, 4) == uninterrupted[2:]


def test_ranks_split_the_global_batch():
    world = [ResumableSampler(20, batch_size=2, seed=5, rank=r, world_size=3) for r in range(3)]
    single = ResumableSampler(20, batch_size=6, seed=5)
    for _ in range(7):  # crosses epochs (3 global batches per epoch)
        parts = [s.next_batch() for s in world]
        assert sum(parts, []) == single.next_batch()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"num_items": 3, "batch_size": 4}, "fewer than one batch"),
        ({"num_items": 0, "batch_size": 1}, "empty dataset"),
        ({"num_items": 10, "batch_size": 2, "rank": 2, "world_size": 2}, "rank < world_size"),
        ({"num_items": 10, "batch_size": 2, "world_size": 2, "drop_last": False}, "different sizes"),
    ],
)
def test_sampler_config_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ResumableSampler(**kwargs)


def test_resume_on_other_data_is_refused():
    state = ResumableSampler(10, 2, seed=0).state_dict()
    with pytest.raises(ConfigError, match="num_items=10, this run 11"):
        ResumableSampler(11, 2, seed=0).load_state_dict(state)


# ---- mixtures ---------------------------------------------------------------------------------------


def test_sampled_token_shares_match_the_weights():
    block_size = 8  # packed blocks: every item is block_size tokens
    sizes = [200, 5000]  # the weight-3 source is small: it gets revisited for many epochs
    sampler = MixtureSampler([range(n) for n in sizes], weights=[3, 1], batch_size=16, seed=0)
    tokens = [0, 0]
    seen: list[set] = [set(), set()]
    while sum(tokens) < 100_000:
        for source, index in sampler.next_batch():
            tokens[source] += block_size
            seen[source].add(index)
            assert 0 <= index < sizes[source]
    share = tokens[0] / sum(tokens)
    assert abs(share - 0.75) < 0.01, share
    assert seen[0] == set(range(200))  # every item of the small source was used
    assert sampler.epochs[0] > 30 and sampler.epochs[1] < 1


def test_mixture_resume_is_exact():
    make = lambda: MixtureSampler([range(7), range(13), range(3)], [1, 2, 0.5], batch_size=5, seed=9)
    uninterrupted = batches(make(), 30)
    first = make()
    batches(first, 11)
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert batches(resumed, 19) == uninterrupted[11:]
    with pytest.raises(ConfigError, match="weights"):
        MixtureSampler([range(7), range(13), range(3)], [1, 1, 1], 5, seed=9).load_state_dict(
            first.state_dict()
        )


def test_mixture_ranks_and_single_source():
    world = [
        MixtureSampler([range(10), range(10)], [1, 1], batch_size=2, seed=1, rank=r, world_size=2)
        for r in range(2)
    ]
    single = MixtureSampler([range(10), range(10)], [1, 1], batch_size=4, seed=1)
    for _ in range(5):
        assert world[0].next_batch() + world[1].next_batch() == single.next_batch()
    one = MixtureSampler([range(6)], [1.0], batch_size=4, seed=0, shuffle=False)
    assert batches(one, 3) == [
        [(0, i) for i in items] for items in ([0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5])
    ]


def test_mixture_config_errors():
    with pytest.raises(ConfigError, match="one weight per dataset"):
        MixtureSampler([range(3)], [1, 2], 2)
    with pytest.raises(ConfigError, match="positive"):
        MixtureSampler([range(3), range(3)], [1, 0], 2)
