"""Length-bucketed batch sampler: budget, coverage, determinism, distributed, resume, padding."""
import numpy as np
import pytest
import torch

from speechft.data import LengthBucketSampler, padding_fraction
from speechft.data.sampler import random_batches


def lognormal_durations(n=2000, seed=0):
    """A realistic speech length mix: lognormal around ~4 s, clipped to 1-15 s."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=np.log(4.0), sigma=0.6, size=n), 1.0, 15.0)


def _flat(batches):
    return [i for b in batches for i in b]


def test_padding_fraction_by_hand():
    assert padding_fraction([[0, 1]], [1.0, 3.0]) == pytest.approx(2 / 6)
    assert padding_fraction([[0], [1]], [1.0, 3.0]) == 0.0
    assert padding_fraction([[0, 1], [2]], [2.0, 2.0, 5.0]) == 0.0


def test_budget_coverage_and_oversize_alone():
    d = list(lognormal_durations(500)) + [100.0]  # one utterance longer than the whole budget
    s = LengthBucketSampler(d, max_batch_seconds=40.0, seed=3)
    batches = list(s)
    assert sorted(_flat(batches)) == list(range(len(d)))  # every item exactly once
    assert len(batches) == len(s) == s.num_batches()
    for b in batches:
        longest = max(d[i] for i in b)
        assert len(b) * longest <= 40.0 or len(b) == 1
    assert [len(b) for b in batches if 500 in b] == [1]


def test_max_batch_size_caps_items():
    s = LengthBucketSampler([0.1] * 100, max_batch_seconds=100.0, max_batch_size=8, shuffle=False)
    assert [len(b) for b in s] == [8] * 12 + [4]


def test_deterministic_per_epoch_and_varies_between_epochs():
    d = lognormal_durations(300)
    a, b = LengthBucketSampler(d, 30.0, seed=1), LengthBucketSampler(d, 30.0, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    second = list(a)
    assert second == list(b) and second != first
    assert sorted(_flat(second)) == list(range(len(d)))
    assert list(LengthBucketSampler(d, 30.0, seed=2)) != first


def test_no_shuffle_is_shortest_first_and_stable():
    d = lognormal_durations(200)
    s = LengthBucketSampler(d, 30.0, shuffle=False)
    batches = list(s)
    longest = [max(d[i] for i in b) for b in batches]
    assert longest == sorted(longest)
    s.set_epoch(5)
    assert list(s) == batches


@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_ranks_get_equal_batch_counts(drop_last):
    d = lognormal_durations(301)
    R = 3
    full = LengthBucketSampler(d, 26.0, seed=7)
    n_all = full.num_batches()
    assert n_all % R != 0, "pick sizes where the split is uneven, or the test checks nothing"
    per_rank = [list(LengthBucketSampler(d, 26.0, seed=7, num_replicas=R, rank=r, drop_last=drop_last))
                for r in range(R)]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1
    n = counts.pop()
    seen = _flat(_flat(per_rank))
    if drop_last:
        assert n == n_all // R and len(seen) == len(set(seen))  # nothing repeated
    else:
        assert n == -(-n_all // R) and set(seen) == set(range(len(d)))  # nothing lost, a few repeated


def test_resume_mid_epoch_yields_exact_remaining_batches():
    d = lognormal_durations(400)
    ref = LengthBucketSampler(d, 30.0, seed=11)
    ref.set_epoch(2)
    expected = list(ref)

    run = LengthBucketSampler(d, 30.0, seed=11)
    run.set_epoch(2)
    it = iter(run)
    consumed = [next(it) for _ in range(5)]
    state = run.state_dict()
    assert state == {"epoch": 2, "batches_done": 5, "seed": 11}

    resumed = LengthBucketSampler(d, 30.0, seed=11)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a training loop re-selecting the same epoch keeps the position
    assert len(resumed) == len(expected) - 5
    assert consumed + list(resumed) == expected
    # The next epoch starts from the top again.
    resumed.set_epoch(3)
    ref.set_epoch(3)
    assert list(resumed) == list(ref)

    with pytest.raises(ValueError, match="seed 11"):
        LengthBucketSampler(d, 30.0, seed=0).load_state_dict(state)


def test_works_as_dataloader_batch_sampler():
    d = [0.5, 1.0, 1.5, 2.0, 2.5]
    ds = torch.utils.data.TensorDataset(torch.arange(5))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=LengthBucketSampler(d, 3.0, shuffle=False))
    assert [b[0].tolist() for b in loader] == [[0, 1], [2], [3], [4]]


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="duration of item 1"):
        LengthBucketSampler([1.0, float("nan")], 10.0)
    with pytest.raises(ValueError, match="max_batch_seconds"):
        LengthBucketSampler([1.0], 0)
    with pytest.raises(ValueError, match="rank"):
        LengthBucketSampler([1.0], 10.0, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="non-empty"):
        LengthBucketSampler([], 10.0)


def test_padding_waste_small_vs_random_batching():
    d = lognormal_durations(2000)
    budget = 60.0
    bucket = padding_fraction(list(LengthBucketSampler(d, budget, seed=0)), d)
    rand = padding_fraction(random_batches(d, budget, seed=0), d)
    print(f"\npadding waste, lognormal 1-15 s x2000, {budget:.0f} s budget: "
          f"bucketed {bucket:.1%} vs random {rand:.1%}")
    assert bucket <= 0.10
    assert rand > 3 * bucket


def test_padding_waste_on_real_fsdd_lengths(fsdd_root):
    import soundfile as sf

    files = sorted((fsdd_root / "recordings").glob("*.wav"))
    d = np.array([sf.info(str(f)).duration for f in files])
    budget = 16.0  # ~32 utterances of ~0.5 s
    bucket = padding_fraction(list(LengthBucketSampler(d, budget, seed=0)), d)
    rand = padding_fraction(random_batches(d, budget, seed=0), d)
    print(f"\npadding waste, FSDD {len(d)} files {d.min():.2f}-{d.max():.2f} s, {budget:.0f} s budget: "
          f"bucketed {bucket:.1%} vs random {rand:.1%}")
    assert bucket <= 0.10 and rand > bucket
