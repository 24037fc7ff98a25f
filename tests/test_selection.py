import pytest
import torch

from mmtok_cli.selection import coverage_matrix, greedy_max_coverage, resolve, select

from . import reference


def _image(seed, n, m, d=16, e=12):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(n, d, generator=g)
    U = torch.randn(n, e, generator=g)
    T = torch.randn(m, d, generator=g) if m else None
    return V, U, T


@pytest.mark.parametrize("seed,n,m,k", [(0, 40, 5, 8), (1, 64, 10, 16), (2, 30, 0, 7), (3, 50, 3, 1), (4, 25, 8, 24)])
def test_matches_plain_greedy_loop(seed, n, m, k):
    V, U, T = _image(seed, n, m)
    got = select(V[None], U[None], None if T is None else T[None], k=k).indices[0].tolist()
    assert got == reference.mmtok_indices(V, U, T, k)
    assert len(got) == k and got == sorted(got)


def test_coverage_matrix_matches_definition():
    V, U, T = _image(5, 20, 4)
    C = coverage_matrix(V[None], U[None], T[None], alpha=0.5, tau_t=0.02, tau_v=0.2)[0]
    assert C.dtype == torch.float32 and C.shape == (24, 20)
    torch.testing.assert_close(C.double(), reference.coverage(V, U, T), rtol=1e-5, atol=1e-7)
    # each P row sums to 1/m, each Q row to alpha/n
    torch.testing.assert_close(C[:4].sum(1), torch.full((4,), 1 / 4))
    torch.testing.assert_close(C[4:].sum(1), torch.full((20,), 0.5 / 20))


def test_k_at_least_n_keeps_everything_even_disallowed():
    V, U, T = _image(6, 12, 3)
    allowed = torch.zeros(1, 12, dtype=torch.bool)
    for k in (12, 13, 100):
        sel = select(V[None], U[None], T[None], k=k, allowed=allowed)
        assert sel.indices[0].tolist() == list(range(12))


def test_never_picks_disallowed_and_keeps_all_allowed_when_short():
    V, U, T = _image(7, 30, 4)
    allowed = torch.ones(1, 30, dtype=torch.bool)
    allowed[0, ::2] = False  # 15 allowed
    sel = select(V[None], U[None], T[None], k=6, allowed=allowed)
    kept = sel.indices[0].tolist()
    assert len(kept) == 6 and all(j % 2 == 1 for j in kept)
    assert kept == reference.mmtok_indices(V, U, T, 6, allowed=allowed[0].tolist())
    short = select(V[None], U[None], T[None], k=20, allowed=allowed).indices[0].tolist()
    assert short == list(range(1, 30, 2))


def test_batched_equals_one_by_one_with_padding():
    sizes = [(40, 5), (25, 0), (33, 9), (40, 2)]
    images = [_image(10 + i, n, m) for i, (n, m) in enumerate(sizes)]
    n_max, m_max = 40, 9
    B = len(images)
    V = torch.zeros(B, n_max, 16)
    U = torch.zeros(B, n_max, 12)
    T = torch.zeros(B, m_max, 16)
    vmask = torch.zeros(B, n_max, dtype=torch.bool)
    tmask = torch.zeros(B, m_max, dtype=torch.bool)
    for b, (v, u, t) in enumerate(images):
        V[b, : len(v)], U[b, : len(u)], vmask[b, : len(v)] = v, u, True
        if t is not None:
            T[b, : len(t)], tmask[b, : len(t)] = t, True
    ks = [8, 5, 33, 12]
    batched = select(V, U, T, k=ks, vision_mask=vmask, text_mask=tmask).indices
    for b, (v, u, t) in enumerate(images):
        alone = select(v[None], u[None], None if t is None else t[None], k=ks[b]).indices[0]
        assert batched[b].tolist() == alone.tolist()
        assert batched[b].tolist() == reference.mmtok_indices(v, u, t, ks[b])
        assert int(batched[b].max()) < len(v)  # never a padding position


def test_greedy_gains_match_objective_and_are_monotone():
    V, U, T = _image(20, 48, 6)
    C = reference.coverage(V, U, T)
    picks, gains = greedy_max_coverage(C.float()[None], 20, torch.ones(1, 48, dtype=torch.bool))
    order = picks[0].tolist()
    values = [reference.objective(C, order[: i + 1]) for i in range(len(order))]
    assert all(b > a for a, b in zip(values, values[1:]))  # objective strictly increases
    torch.testing.assert_close(gains[0].double().cumsum(0), torch.tensor(values, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    # submodularity: greedy's marginal gains never grow
    assert all(b <= a + 1e-7 for a, b in zip(gains[0].tolist(), gains[0].tolist()[1:]))


def test_ties_pick_lowest_index():
    # columns 1 and 3 are identical and dominate: the first pick must be column 1, then 3 adds nothing
    C = torch.tensor([[0.1, 0.5, 0.2, 0.5], [0.0, 0.4, 0.1, 0.4], [0.2, 0.3, 0.3, 0.3]])
    picks, _ = greedy_max_coverage(C[None], 3, torch.ones(1, 4, dtype=torch.bool))
    assert picks[0].tolist()[0] == 1
    ref, _ = reference.greedy(C.double(), 3)
    assert picks[0].tolist() == ref
    zero = torch.zeros(1, 2, 5)  # all gains zero: lowest indices in order
    assert greedy_max_coverage(zero, 3, torch.ones(1, 5, dtype=torch.bool))[0][0].tolist() == [0, 1, 2]


def test_low_precision_inputs_use_float32_math():
    """bfloat16 V, U, T give the float64 reference's matrix and picks on the same (bfloat16) values."""
    V, U, T = _image(30, 36, 5)
    half = [x.bfloat16() for x in (V, U, T)]
    C = coverage_matrix(*(x[None] for x in half))[0]
    assert C.dtype == torch.float32
    torch.testing.assert_close(C.double(), reference.coverage(*half), rtol=1e-5, atol=1e-7)
    assert select(*(x[None] for x in half), k=9).indices[0].tolist() == reference.mmtok_indices(*half, 9)


def test_no_text_equals_empty_text_mask():
    V, U, T = _image(40, 30, 4)
    without = select(V[None], U[None], None, k=7).indices[0].tolist()
    masked = select(V[None], U[None], T[None], k=7, text_mask=torch.zeros(1, 4, dtype=torch.bool)).indices[0]
    assert masked.tolist() == without == reference.mmtok_indices(V, U, None, 7)


def test_greedy_marks_steps_past_k_or_past_the_allowed_tokens_as_no_pick():
    # Every image steps every round; its picks past its own k, or once nothing allowed is left, are discarded.
    C = torch.rand(3, 7, 6, generator=torch.Generator().manual_seed(3))
    allowed = torch.ones(3, 6, dtype=torch.bool)
    allowed[2, 2:] = False  # two allowed columns, k = 4
    picks, gains = greedy_max_coverage(C, [4, 1, 4], allowed)
    assert (picks[1, 1:] == -1).all() and gains[1, 1:].isnan().all()
    assert sorted(picks[2, :2].tolist()) == [0, 1] and (picks[2, 2:] == -1).all() and gains[2, 2:].isnan().all()
    for b, k in ((0, 4), (1, 1)):
        assert picks[b, :k].tolist() == reference.greedy(C[b].double(), k)[0]


# -- pick order ----------------------------------------------------------------------------------------


def test_order_is_the_greedy_pick_order_not_ascending():
    # Column 2 covers the most (rows 0 and 1), then column 0 adds row 2 (0.9), then column 3 adds row 3
    # (0.3, column 1 only 0.1): picks 2, 0, 3, kept ascending as 0, 2, 3.
    C = torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.9, 0.0, 0.0, 0.0], [0.0, 0.1, 0.0, 0.3]])
    vision = torch.zeros(2, 4, 1)  # only the shape matters to `resolve`
    sel = resolve(vision, [3, 4], None, None,
                  lambda rows, k, allowed: greedy_max_coverage(C.expand(len(k), -1, -1), k, allowed))
    assert reference.greedy(C.double(), 3)[0] == [2, 0, 3]
    assert sel.order[0].tolist() == [2, 0, 3] and sel.indices[0].tolist() == [0, 2, 3]
    assert sel.order[1].tolist() == sel.indices[1].tolist() == [0, 1, 2, 3]  # k >= n: index order


@pytest.mark.parametrize("seed,n,m,k", [(0, 40, 5, 8), (2, 30, 0, 7), (4, 25, 8, 24)])
def test_select_order_matches_plain_greedy_loop(seed, n, m, k):
    V, U, T = _image(seed, n, m)
    sel = select(V[None], U[None], None if T is None else T[None], k=k)
    picked, _ = reference.greedy(reference.coverage(V, U, T), k)
    assert sel.order[0].tolist() == picked
    assert sorted(picked) == sel.indices[0].tolist() and picked != sorted(picked)


@pytest.mark.parametrize("cache_bytes", [None, 1])
def test_batched_order_equals_one_by_one(monkeypatch, cache_bytes):
    """Pruning rows, a keep-all row and a keep-allowed row in one batch, in one greedy group or one per image."""
    from mmtok_cli import selection

    if cache_bytes is not None:
        monkeypatch.setattr(selection, "_CPU_CACHE_BYTES", cache_bytes)
    images = [_image(50 + i, n, 4) for i, n in enumerate((30, 22, 30, 26))]
    V = torch.zeros(4, 30, 16)
    U = torch.zeros(4, 30, 12)
    T = torch.stack([t for _, _, t in images])
    vmask = torch.zeros(4, 30, dtype=torch.bool)
    for b, (v, u, _) in enumerate(images):
        V[b, : len(v)], U[b, : len(u)], vmask[b, : len(v)] = v, u, True
    allowed = vmask.clone()
    allowed[3, 5:] = False  # 5 allowed, k = 9: keeps all allowed
    ks = [9, 30, 4, 9]  # image 1: k >= n
    sel = select(V, U, T, k=ks, vision_mask=vmask, allowed=allowed)
    for b, (v, u, t) in enumerate(images):
        alone = select(v[None], u[None], t[None], k=ks[b], allowed=allowed[b : b + 1, : len(v)])
        assert sel.order[b].tolist() == alone.order[0].tolist()
        assert sorted(sel.order[b].tolist()) == sel.indices[b].tolist()
    assert sel.order[1].tolist() == list(range(22)) and sel.order[3].tolist() == list(range(5))
    assert sel.order[0].tolist() == reference.greedy(reference.coverage(*images[0]), 9)[0]
