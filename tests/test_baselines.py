"""Baseline selections: each rule on tiny hand-built tensors, and the shared edge rules."""

import pytest
import torch

from mmtok_cli.baselines import BASELINES, choose


def _unit(*angles_deg: float) -> torch.Tensor:
    a = torch.tensor(angles_deg) * torch.pi / 180
    return torch.stack([a.cos(), a.sin()], -1)


def test_uniform_spreads_over_the_allowed_tokens():
    V = torch.randn(1, 9, 4)
    assert choose("uniform", V, V, k=3)[0].tolist() == [1, 4, 7]
    allowed = torch.tensor([[False, False, True, True, True, True, True, True, False]])
    # allowed are 2..7 (6 tokens): ranks 1 and 4 -> positions 3 and 6
    assert choose("uniform", V, V, k=2, allowed=allowed)[0].tolist() == [3, 6]


def test_divprune_starts_far_from_the_mean_then_maximises_the_nearest_distance():
    # Angles 0, 10, 20, 90, 180: their mean points at ~38 deg, so token 4 (180 deg) is farthest from it.
    U = _unit(0, 10, 20, 90, 180)[None]
    got = choose("divprune", U, U, k=2)[0].tolist()
    assert got == [0, 4]  # 180 first, then the token farthest from it: 0 deg
    assert choose("divprune", U, U, k=3)[0].tolist() == [0, 3, 4]  # then 90 (nearest pick 90 deg away)


def test_vision_and_text_cover_their_own_side_only():
    # Tokens 0-2 are a tight cluster (vision coverage wants one of them), token 3 matches the text.
    U = _unit(0, 1, 2, 90, 95)[None]
    V = _unit(0, 1, 2, 90, 95)[None]
    T = _unit(92)[None]
    assert choose("text", V, U, T, k=1)[0].tolist() == [3]
    vision = choose("vision", V, U, T, k=1)[0].tolist()
    assert vision == choose("vision", V, U, None, k=1)[0].tolist()  # the text plays no part
    assert vision != [3] and vision != [4]  # the big cluster covers more vision tokens
    # No text rows: text falls back to vision coverage.
    no_text = torch.zeros(1, 1, dtype=torch.bool)
    assert choose("text", V, U, T, k=2, text_mask=no_text)[0].tolist() == choose("vision", V, U, k=2)[0].tolist()


def test_random_is_seeded_and_independent_of_the_batch():
    V = torch.randn(3, 20, 4)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 15:] = False
    batched = choose("random", V, V, k=[5, 5, 3], vision_mask=mask, allowed=mask)
    alone = choose("random", V[2:], V[2:], k=3)
    assert batched[2].tolist() == alone[0].tolist()
    assert batched[0].tolist() == choose("random", V[:1], V[:1], k=5)[0].tolist()
    assert choose("random", V[:1], V[:1], k=5, seed=1)[0].tolist() != batched[0].tolist()
    assert (batched[1] < 15).all()


@pytest.mark.parametrize("method", BASELINES)
def test_edge_rules_are_those_of_mmtok(method):
    torch.manual_seed(0)
    V, U, T = torch.randn(2, 12, 6), torch.randn(2, 12, 5), torch.randn(2, 3, 6)
    allowed = torch.ones(2, 12, dtype=torch.bool)
    allowed[:, ::3] = False  # 8 allowed per image
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 10:] = False
    got = choose(method, V, U, T, k=[5, 5], vision_mask=mask, allowed=allowed & mask)
    for row, kept in enumerate(got):
        assert len(kept) == 5 and kept.tolist() == sorted(set(kept.tolist()))
        assert allowed[row, kept].all() and mask[row, kept].all()
    assert choose(method, V, U, T, k=[12, 20], vision_mask=mask)[1].tolist() == list(range(10))  # k >= n: all
    assert choose(method, V, U, T, k=10, allowed=allowed)[0].tolist() == allowed[0].nonzero().flatten().tolist()


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown selection method"):
        choose("best", torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), k=1)


def test_every_method_runs_through_the_engine(engine):
    from mmtok_cli.options import METHODS

    from .conftest import noise_image

    images = [noise_image(3), noise_image(4, size=(90, 200))]
    for method in METHODS:
        answers = engine.run(images, ["Is there a cat?", "What colour is it?"], tokens=[7, 5], method=method,
                             max_new_tokens=2)
        kept = [a.vision_kept for a in answers]
        assert kept == ([a.vision_total for a in answers] if method == "full" else [7, 5]), method
