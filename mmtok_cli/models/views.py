"""Images made of several views: LLaVA-NeXT / LLaVA-OneVision crops, InternVL tiles, Gemma 3 pan-and-scan.

An adapter marks which view each vision token comes from (`VisionTokens.parts`); the selection then
runs per view with a share of the image's budget, all views of a batch in one batched call.
`--tokens K` stays the total the language model sees per image unless the caller asks otherwise
(`--budget`, `Engine.run(budget=...)`, checked by `options.check_conventions`):

* "total": K split evenly over the views (the MMTok paper's 32 x 5 = 160 on LLaVA-NeXT);
* "per-view": K for every view (what the MMTok and DivPrune authors' LLaVA-NeXT code does);
* "global": one selection over all the image's tokens at once.
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


def view_budgets(mode: str, k: int, sizes: list[int]) -> list[int]:
    """Each view's budget for an image budget `k` under `mode` ("total" or "per-view")."""
    if mode == "per-view":
        return [min(k, size) for size in sizes]
    return split_evenly(k, sizes)


def select_per_view(
    vision: torch.Tensor, features: torch.Tensor, parts: torch.Tensor,
    allowed: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, budgets: list[int], *, mode: str,
    method: str, seeds: Sequence[int] | None = None, zip_inputs: ZipInputs | None = None, **params: float | str,
) -> Selection:
    """Per-view selection: one batched `choose` over every (image, view) row, each with its share of its image's budget.

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
        for view, (idx, share) in enumerate(zip(members, view_budgets(mode, k, [len(m) for m in members]))):
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
