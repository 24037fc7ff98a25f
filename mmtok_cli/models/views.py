"""Items made of several views: LLaVA-NeXT / LLaVA-OneVision crops, InternVL tiles, Gemma 3 pan-and-scan, several
images, a video's temporal grids (Qwen merges 2 frames into one grid).

An adapter marks which view each vision token comes from (`VisionTokens.parts`, numbered over the item's inputs)
and which input (`VisionTokens.inputs`); the selection then runs per view with a share of the item's budget, all
views of a batch in one batched call. `--tokens K` stays the total the language model sees per item unless the
caller asks otherwise (`--budget`, `Engine.run(budget=...)`, checked by `options.check_conventions`):

* "total": K split evenly over the item's inputs, then each input's share evenly over its views (the MMTok paper's
  32 x 5 = 160 on LLaVA-NeXT; a video's share over its temporal grids);
* "per-view": K for every view (what the MMTok and DivPrune authors' LLaVA-NeXT code does);
* "global": one selection over all the item's tokens at once; on a video, at least one token of every temporal
  grid first (Qwen3-VL writes a timestamp per grid: no span of the video may vanish), the rest over everything.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from ..baselines import RANDOM_SEED, ZipInputs, choose
from ..selection import Selection


def split_evenly(total: int, sizes: list[int]) -> list[int]:
    """Split a budget evenly over parts of the given sizes; what a small part cannot use goes to the others.

    Equal shares first (the remainder to the first parts), then water-filling: the sum is min(total, sum(sizes)).
    """
    budgets = [0] * len(sizes)
    left = min(total, sum(sizes))
    while left > 0:
        open_parts = [i for i, size in enumerate(sizes) if budgets[i] < size]
        share, extra = divmod(left, len(open_parts))
        for rank, i in enumerate(open_parts):
            give = min(share + (rank < extra), sizes[i] - budgets[i])
            budgets[i] += give
            left -= give
    return budgets


def view_budgets(mode: str, k: int, sizes: list[int], groups: list[int] | None = None) -> list[int]:
    """Each view's budget for an item budget `k` under `mode` ("total" or "per-view"); `groups`: each view's input
    ("total" splits over the inputs first, then each input's share over its views)."""
    if mode == "per-view":
        return [min(k, size) for size in sizes]
    if groups is None or len(set(groups)) < 2:
        return split_evenly(k, sizes)
    inputs = sorted(set(groups))
    shares = split_evenly(k, [sum(s for s, g in zip(sizes, groups) if g == i) for i in inputs])
    budgets = [0] * len(sizes)
    for share, i in zip(shares, inputs):
        members = [v for v, g in enumerate(groups) if g == i]
        for v, b in zip(members, split_evenly(share, [sizes[v] for v in members])):
            budgets[v] = b
    return budgets


def floor_shares(parts: torch.Tensor, timed: torch.Tensor, budgets: list[int]) -> list[list[int]]:
    """Per item, per view: 1 on the temporal grids that `--budget global` keeps a token of first (every grid of its
    videos, or `k` of them evenly spaced where the budget is smaller), 0 elsewhere."""
    out = []
    for row_parts, row_timed, k in zip(parts.tolist(), timed.tolist(), budgets):
        views = max(row_parts) + 1 if row_parts else 0
        grids = sorted({p for p, t in zip(row_parts, row_timed) if t and p >= 0})
        if k < len(grids):
            grids = [grids[(2 * i + 1) * len(grids) // (2 * k)] for i in range(k)]
        chosen = set(grids)
        out.append([int(v in chosen) for v in range(views)])
    return out


def select_global(
    vision: torch.Tensor, features: torch.Tensor, mask: torch.Tensor, parts: torch.Tensor, timed: torch.Tensor,
    allowed: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, budgets: list[int], *, method: str,
    seeds: Sequence[int] | None = None, **params: float | str,
) -> Selection:
    """`--budget global` over items with videos: one token of each temporal grid first (`floor_shares`, chosen per
    grid as "per-view" chooses), then the rest of each item's budget by one selection over all its other tokens.
    The pick order lists the grids' tokens first."""
    device = vision.device
    floor = select_per_view(vision, features, parts, allowed, text, text_mask, budgets, mode="total", method=method,
                            seeds=seeds, shares=floor_shares(parts, timed, budgets), **params)
    counts = mask.sum(1).tolist()
    taken = torch.zeros_like(allowed)
    for row, idx in enumerate(floor.indices):
        taken[row, idx] = True
    rest = [max(0, k - len(idx)) if k < n else n for k, n, idx in zip(budgets, counts, floor.indices)]
    seed = {} if seeds is None else {"seed": seeds}
    others = choose(method, vision, features, text, k=rest, vision_mask=mask, allowed=allowed & ~taken,
                    text_mask=text_mask, **params, **seed)
    indices, orders = [], []
    for row, (k, n) in enumerate(zip(budgets, counts)):
        if k >= n:  # everything, as every method keeps it
            indices.append(torch.arange(n, device=device))
            orders.append(indices[-1])
            continue
        order = torch.cat([floor.order[row], others.order[row][~taken[row, others.order[row]]]])
        indices.append(torch.sort(order).values)
        orders.append(order)
    return Selection(indices=indices, order=orders, gains=torch.full((len(budgets), 0), float("nan"), device=device))


def select_per_view(
    vision: torch.Tensor, features: torch.Tensor, parts: torch.Tensor,
    allowed: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, budgets: list[int], *, mode: str,
    method: str, seeds: Sequence[int] | None = None, zip_inputs: ZipInputs | None = None,
    inputs: torch.Tensor | None = None, shares: list[list[int]] | None = None, **params: float | str,
) -> Selection:
    """Per-view selection: one batched `choose` over every (image, view) row, each with its share of its image's budget.

    `inputs` (B, n): each token's visual input, for "total" over items of several (`view_budgets`); `shares`: each
    item's per-view budgets, given instead of computed from `mode`.

    `parts` (B, n) long is each token's view (0, 1, ...; -1 for batch padding). The image's pick order
    interleaves its views by pick rank: every view's first pick (view 0 first), then every view's second pick,
    and so on, as the views choose independently and at once. An image that keeps all its tokens is in index
    order. `gains` are left empty: each view's are on its own scale. Methods that make new rows
    (`visionzip`) feed each image's views one after the other, each view's rows where it has them, its kept V
    rows where it kept them all.
    """
    rows, row_image, row_k, row_seed = [], [], [], []
    views_of = parts.max(1).values.tolist()  # one host sync for the batch, not one per image
    for image, (image_parts, k, last) in enumerate(zip(parts, budgets, views_of)):
        members = [(image_parts == p).nonzero().flatten() for p in range(int(last) + 1)]
        groups = None if inputs is None else [int(inputs[image, m[0]]) if len(m) else -1 for m in members]
        got = view_budgets(mode, k, [len(m) for m in members], groups) if shares is None else shares[image]
        for view, (idx, share) in enumerate(zip(members, got)):
            if share > 0:
                rows.append(idx)
                row_image.append(image)
                row_k.append(share)
                row_seed.append((RANDOM_SEED if seeds is None else seeds[image]) + view)  # views draw apart
    device = vision.device
    if not rows:  # every budget is 0
        empty = [torch.zeros(0, dtype=torch.long, device=device) for _ in budgets]
        return Selection(indices=empty, order=empty, gains=torch.full((len(budgets), 0), float("nan"), device=device))
    index = pad_sequence(rows, batch_first=True)
    row_mask = pad_sequence([torch.ones(len(r), dtype=torch.bool, device=index.device) for r in rows], True)
    images = torch.tensor(row_image, device=index.device)
    # Index image and token at once: only each view's own tokens are copied, not its whole image per view.
    # Padding positions read token 0; row_mask hides them.
    at = (images[:, None], index)
    chosen = choose(
        method, vision[at], features[at], text[images], k=row_k, vision_mask=row_mask,
        allowed=allowed[at] & row_mask, text_mask=text_mask[images], seed=row_seed,
        zip_inputs=None if zip_inputs is None else zip_inputs.take(at), **params,
    )
    views: list[list[torch.Tensor]] = [[] for _ in budgets]  # per image, each view's picks in pick order
    for image, idx, order in zip(row_image, rows, chosen.order):
        views[image].append(idx[order])
    counts = (parts >= 0).sum(1).tolist()
    indices, orders = [], []
    for image, picks in enumerate(views):
        if not picks:  # a budget of 0
            indices.append(torch.zeros(0, dtype=torch.long, device=device))
            orders.append(indices[-1])
            continue
        ranks = torch.cat([torch.arange(len(p), device=device) for p in picks])
        # A stable sort by rank keeps the views in order within each rank.
        order = torch.cat(picks)[torch.sort(ranks, stable=True).indices]
        indices.append(torch.sort(order).values)
        orders.append(indices[-1] if len(order) == counts[image] else order)
    merged = None
    if chosen.rows is not None and any(r is not None for r in chosen.rows):
        feeds: list[list[torch.Tensor]] = [[] for _ in budgets]  # per image, each view's rows, views in order
        made_any = [False] * len(budgets)
        for row, (image, idx, made) in enumerate(zip(row_image, rows, chosen.rows)):
            feeds[image].append(vision[image, idx[chosen.indices[row]]] if made is None else made)
            made_any[image] |= made is not None
        merged = [torch.cat(f) if m else None for f, m in zip(feeds, made_any)]
    return Selection(indices=indices, order=orders, gains=torch.full((len(budgets), 0), float("nan"), device=device),
                     rows=merged)


def previous_frame(parts: torch.Tensor, timed: torch.Tensor, inputs: torch.Tensor | None) -> torch.Tensor:
    """(B, n) long: each video token's predecessor, the token at the same position of the previous temporal grid of
    the same video (what `evs` compares it with); -1 for a first grid's tokens, images' and padding."""
    previous = torch.full_like(parts, -1)
    same_input = torch.zeros_like(parts) if inputs is None else inputs
    for row in range(parts.shape[0]):
        members: dict[int, torch.Tensor] = {}
        for view in range(int(parts[row].max()) + 1):
            idx = ((parts[row] == view) & timed[row]).nonzero().flatten()
            if len(idx):
                members[view] = idx
        for view, idx in members.items():
            before = members.get(view - 1)
            if before is not None and len(before) == len(idx) and bool(
                same_input[row, before[0]] == same_input[row, idx[0]]
            ):
                previous[row, idx] = before
    return previous
