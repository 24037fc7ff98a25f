"""Baseline selections: each rule on tiny hand-built tensors, and the shared edge rules."""

import pytest
import torch

from mmtok_cli.baselines import BASELINES, ZipInputs, choose


def _zip(method, U):
    """Random VisionZip inputs for the shape of U (no CLS slot, the projector the identity), for "visionzip"; for
    "evs", each token's predecessor 4 tokens back (grids of 4 tokens)."""
    if method == "evs":
        previous = torch.arange(U.shape[1]) - 4
        return {"previous": previous.clamp_min(-1).expand(U.shape[:2])}
    if method != "visionzip":
        return {}
    g = torch.Generator().manual_seed(5)
    attention = torch.rand(U.shape[:2], generator=g)
    keys = torch.randn(*U.shape[:2], 3, generator=g)
    return {"zip_inputs": ZipInputs(attention=attention, keys=keys, cls=None, project=lambda u: u)}


def _unit(*angles_deg: float) -> torch.Tensor:
    a = torch.tensor(angles_deg) * torch.pi / 180
    return torch.stack([a.cos(), a.sin()], -1)


def test_uniform_spreads_over_the_allowed_tokens():
    V = torch.randn(1, 9, 4)
    assert choose("uniform", V, V, k=3).indices[0].tolist() == [1, 4, 7]
    allowed = torch.tensor([[False, False, True, True, True, True, True, True, False]])
    # allowed are 2..7 (6 tokens): ranks 1 and 4 -> positions 3 and 6
    assert choose("uniform", V, V, k=2, allowed=allowed).indices[0].tolist() == [3, 6]


def test_divprune_starts_far_from_its_nearest_neighbour_then_maximises_the_nearest_distance():
    # Angles 0, 10, 20, 90, 180: token 4 (180 deg) has the farthest nearest neighbour (90 deg away).
    U = _unit(0, 10, 20, 90, 180)[None]
    got = choose("divprune", U, U, k=2).indices[0].tolist()
    assert got == [0, 4]  # 180 first, then the token farthest from it: 0 deg
    three = choose("divprune", U, U, k=3)
    assert three.indices[0].tolist() == [0, 3, 4]  # then 90 (nearest pick 90 deg away)
    assert three.order[0].tolist() == [4, 0, 3]  # the order it picked them in


def test_vision_and_text_cover_their_own_side_only():
    # Tokens 0-2 are a tight cluster (vision coverage wants one of them), token 3 matches the text.
    U = _unit(0, 1, 2, 90, 95)[None]
    V = _unit(0, 1, 2, 90, 95)[None]
    T = _unit(92)[None]
    assert choose("text", V, U, T, k=1).indices[0].tolist() == [3]
    vision = choose("vision", V, U, T, k=1).indices[0].tolist()
    assert vision == choose("vision", V, U, None, k=1).indices[0].tolist()  # the text plays no part
    assert vision != [3] and vision != [4]  # the big cluster covers more vision tokens
    # No text rows: text falls back to vision coverage.
    no_text = torch.zeros(1, 1, dtype=torch.bool)
    fallback = choose("text", V, U, T, k=2, text_mask=no_text).indices[0].tolist()
    assert fallback == choose("vision", V, U, k=2).indices[0].tolist()


def test_random_is_seeded_and_independent_of_the_batch():
    V = torch.randn(3, 20, 4)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 15:] = False
    batched = choose("random", V, V, k=[5, 5, 3], vision_mask=mask, allowed=mask).indices
    alone = choose("random", V[2:], V[2:], k=3).indices
    assert batched[2].tolist() == alone[0].tolist()
    assert batched[0].tolist() == choose("random", V[:1], V[:1], k=5).indices[0].tolist()
    assert choose("random", V[:1], V[:1], k=5, seed=1).indices[0].tolist() != batched[0].tolist()
    assert (batched[1] < 15).all()
    # One seed per image: each row draws from its own seed, whatever its neighbours are.
    per_image = choose("random", V, V, k=[5, 5, 3], vision_mask=mask, allowed=mask, seed=[7, 8, 9]).indices
    assert per_image[2].tolist() == choose("random", V[2:], V[2:], k=3, seed=[9]).indices[0].tolist()
    assert per_image[0].tolist() == choose("random", V[:1], V[:1], k=5, seed=7).indices[0].tolist()
    assert per_image[0].tolist() != batched[0].tolist()
    with pytest.raises(ValueError, match="one seed per image"):
        choose("random", V, V, k=2, seed=[1, 2])


@pytest.mark.parametrize("method", BASELINES)
def test_edge_rules_are_those_of_mmtok(method):
    torch.manual_seed(0)
    V, U, T = torch.randn(2, 12, 6), torch.randn(2, 12, 5), torch.randn(2, 3, 6)
    allowed = torch.ones(2, 12, dtype=torch.bool)
    allowed[:, ::3] = False  # 8 allowed per image
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 10:] = False
    got = choose(method, V, U, T, k=[5, 5], vision_mask=mask, allowed=allowed & mask, **_zip(method, U)).indices
    for row, kept in enumerate(got):
        assert len(kept) == 5 and kept.tolist() == sorted(set(kept.tolist()))
        assert allowed[row, kept].all() and mask[row, kept].all()
    kept_all = choose(method, V, U, T, k=[12, 20], vision_mask=mask, **_zip(method, U)).indices[1].tolist()
    assert kept_all == list(range(10))  # k >= n: all
    short = choose(method, V, U, T, k=10, allowed=allowed, **_zip(method, U)).indices[0].tolist()
    assert short == allowed[0].nonzero().flatten().tolist()


@pytest.mark.parametrize("method", ("mmtok",) + BASELINES)
def test_order_is_a_permutation_of_the_kept_indices(method):
    """Pruning rows (one padded), a keep-all row and a keep-allowed row in one batch."""
    torch.manual_seed(1)
    V, U, T = torch.randn(4, 16, 6), torch.randn(4, 16, 5), torch.randn(4, 3, 6)
    mask = torch.ones(4, 16, dtype=torch.bool)
    mask[1, 11:] = False
    allowed = mask.clone()
    allowed[3, ::2] = False  # 8 allowed, k = 9
    sel = choose(method, V, U, T, k=[6, 5, 20, 9], vision_mask=mask, allowed=allowed, **_zip(method, U))
    for row, (kept, order) in enumerate(zip(sel.indices, sel.order)):
        assert sorted(order.tolist()) == kept.tolist() and len(set(order.tolist())) == len(kept), row
    assert sel.order[2].tolist() == list(range(16)) and sel.order[3].tolist() == list(range(1, 16, 2))
    if method in ("random", "uniform"):  # no pick order of their own: index order
        assert all(o.tolist() == i.tolist() for o, i in zip(sel.order, sel.indices))
    else:  # greedy: the first pick is not simply the lowest index every time
        assert any(o.tolist() != i.tolist() for o, i in zip(sel.order[:2], sel.indices[:2]))


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown selection method"):
        choose("best", torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), k=1)


def test_every_method_runs_through_the_engine(engine):
    from mmtok_cli.options import METHODS

    from .conftest import noise_image

    images = [noise_image(3), noise_image(4, size=(90, 200))]
    for method in (m for m in METHODS if m != "evs"):  # evs chooses among a video's frames: test_video.py
        answers = engine.run(images, ["Is there a cat?", "What colour is it?"], tokens=[7, 5], method=method,
                             max_new_tokens=2)
        kept = [a.vision_kept for a in answers]
        assert kept == ([a.vision_total for a in answers] if method == "full" else [7, 5]), method
        if method == "visionzip":  # the CLS slot stands for no token of V
            assert [len(a.kept_indices[0]) for a in answers] == [6, 4]
        for a in answers:
            assert sorted(a.kept_order[0]) == a.kept_indices[0], method
        if method in ("full", "random", "uniform"):
            assert all(a.kept_order == a.kept_indices for a in answers), method
        else:  # the greedy order reaches the answers
            assert any(a.kept_order != a.kept_indices for a in answers), method


def _authors_divprune(x, k):
    """DivPrune's selection loop as its authors wrote it (vbdi/divprune at 799e2d9, LLaVA/llava/model/llava_arch.py,
    `DivPrune`), on one image's (n, d) features, in float64: the pick order."""
    x = x.double()
    norm_matrix = x / x.norm(dim=1, keepdim=True)
    cosine_matrix = 1.0 - torch.mm(norm_matrix, norm_matrix.t())
    s = torch.empty(k, dtype=torch.long)
    for i in range(k):
        if i == 0:
            m2 = cosine_matrix
        else:
            m2 = torch.index_select(cosine_matrix, 0, torch.index_select(s, 0, torch.arange(0, i)))
        if i == 0:
            scores = torch.topk(m2, 2, dim=0, largest=False).values[1, :]
        else:
            scores = torch.min(m2, dim=0).values
        s[i] = torch.argmax(scores)
    return s.tolist()


@pytest.mark.parametrize("k", [4, 16, 64])
def test_divprune_keeps_what_the_authors_loop_keeps(k):
    # LLaVA-1.5-7B sizes: 576 tokens of width 4096 (the projected tokens DivPrune's code selects from).
    g = torch.Generator().manual_seed(k)
    V = torch.randn(3, 576, 4096, generator=g)
    V[1] += 2 * torch.randn(4096, generator=g)  # a shared direction: distances no longer all alike
    sel = choose("divprune", V, torch.zeros(3, 576, 1), k=k)  # V, not U, is what it reads by default
    for row in range(3):
        expected = _authors_divprune(V[row], k)
        assert sel.order[row].tolist() == expected
        assert sel.indices[row].tolist() == sorted(expected)
    on_u = choose("divprune", torch.zeros(1, 576, 1), V[:1], k=k, divprune_on="features")  # Qwen: U
    assert on_u.order[0].tolist() == _authors_divprune(V[0], k)


def test_divprune_end_to_end_on_the_projected_tokens(engine):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from .conftest import noise_image

    model = LlavaForConditionalGeneration.from_pretrained(engine.model_name).eval().to(engine.device)
    processor = AutoProcessor.from_pretrained(engine.model_name)
    image = noise_image(6)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a cat?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pixels = processor(images=[image], text=[prompt], return_tensors="pt")["pixel_values"].to(engine.device)
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        V = model.model.multi_modal_projector(hidden[-2][0, 1:]).cpu()  # the tokens the LLM would receive
    for k in (4, 16):
        answer = engine.ask(image, "Is there a cat?", method="divprune", tokens=k, max_new_tokens=1)
        assert answer.kept_order == [_authors_divprune(V, k)]
        assert answer.kept_indices == [sorted(_authors_divprune(V, k))]


def _authors_mmtok(T, V, U, k, tv_temp, alpha=0.5, vv_temp=0.2):
    """MMTok's selector as its authors wrote it (Ironieser/MMTok at d1522cd, mmtok/core/semantic_selector.py,
    `mm_coverage_selection` and its greedy loop), float32 as theirs: the pick order."""
    def l2(x):
        return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)

    P = l2(T).float() @ l2(V).float().T
    Q = l2(U).float() @ l2(U).float().T
    m, n = P.shape
    P = torch.softmax(P * (1.0 / tv_temp), dim=1) / m
    Q = torch.softmax(Q * (1.0 / vv_temp), dim=1) / n
    combined = torch.cat([P, Q * alpha], dim=0)
    best = torch.zeros(m + n)
    mask = torch.zeros(n)
    picks = []
    for _ in range(min(k, n)):
        delta = (combined - best.unsqueeze(1)).clamp_min_(0).sum(0)
        delta.add_(mask)
        j = int(torch.argmax(delta))
        picks.append(j)
        best = torch.maximum(best, combined[:, j])
        mask[j] = float("-inf")
    return picks


@pytest.mark.parametrize("k", [4, 16, 64])
def test_mmtok_keeps_what_the_authors_selector_keeps(k):
    g = torch.Generator().manual_seed(100 + k)
    V, U, T = torch.randn(2, 576, 4096, generator=g), torch.randn(2, 576, 1024, generator=g), torch.randn(2, 9, 4096,
                                                                                                        generator=g)
    U[1] += 3 * torch.randn(1024, generator=g)  # clustered features: Q far from uniform
    for tau_t in (0.02, 0.01):
        sel = choose("mmtok", V, U, T, k=k, tau_t=tau_t)
        for row in range(2):
            assert sel.order[row].tolist() == _authors_mmtok(T[row], V[row], U[row], k, tau_t)


def _vllm_evs_mask(video_embeds, thw, merge, q):
    """EVS's retention mask as vLLM computes it (vllm-project/vllm at 094f117, vllm/multimodal/evs.py,
    `compute_retention_mask` with `compute_retained_tokens_count`), transcribed: one video's (T * H * W / merge^2, d)
    merged embeddings, its (T, H, W) grid and pruning rate q -> a bool mask of the tokens kept."""
    t, h, w = thw
    frames = video_embeds.reshape(t, h // merge, w // merge, video_embeds.shape[-1])
    per_frame = (h // merge) * (w // merge)
    similarity = torch.nn.functional.cosine_similarity(frames[1:], frames[:-1], dim=-1)
    dissimilarity = torch.cat([255 * torch.ones_like(frames[:1, :, :, 0]), 1 - similarity], dim=0).view(-1)
    order = torch.argsort(dissimilarity, dim=-1, descending=True, stable=True)
    keep = max(per_frame, int(per_frame * t * (1 - q)))
    mask = torch.zeros_like(dissimilarity, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


@pytest.mark.parametrize("q", [0.3, 0.6, 0.75, 0.9])
def test_evs_keeps_what_vllm_keeps(q):
    """On the same merged video tokens (8 temporal grids of 6 x 8, one grid repeated so ties happen): the same tokens
    as vLLM's EVS at pruning rate q, asked for as that many tokens."""
    t, h, w, d = 8, 12, 16, 64
    g = torch.Generator().manual_seed(7)
    V = torch.randn(t, h // 2 * w // 2, d, generator=g)
    V[4] = V[3]  # a still frame: every score of grid 4 is 0, a tie broken by index
    V[6] = V[5] + 0.01 * torch.randn(V[5].shape, generator=g)
    V = V.reshape(-1, d)
    mask = _vllm_evs_mask(V, (t, h, w), 2, q)
    per_frame = h // 2 * w // 2
    previous = torch.arange(len(V)) - per_frame
    previous[previous < 0] = -1
    got = choose("evs", V[None], V[None], k=int(mask.sum()), previous=previous[None])
    assert got.indices[0].tolist() == mask.nonzero().flatten().tolist()
    assert got.order[0][:per_frame].tolist() == list(range(per_frame))  # the first grid first, in index order
