"""Baseline token selections to compare MMTok against, and `choose`, the dispatch by method name.

Every method follows the same rules as `selection.select`: it never picks a token that is not
allowed, an image with k >= n keeps all its tokens, an image with fewer than k allowed tokens keeps
all allowed ones, and kept indices come back ascending, with their pick order alongside (`Selection.order`):
the greedy order for vision, text and divprune; index order for random and uniform, which have none.
All of them run batched over padded tensors (no Python loop over images). The rules per method:

* random   -- k allowed tokens drawn with a seed per image (the engine derives it from the image's
              pixels, so an image gets the same tokens in any batch, on any device, and different
              images get different draws). The draw depends on that seed and the allowed tokens only,
              never on batch neighbours.
* uniform  -- k tokens evenly spaced over the image's allowed tokens in token order: the i-th of k
              has rank floor((2i + 1) * a / (2k)) among the a allowed tokens. In LLaVA's row-major grid
              that spreads them over the whole image; for LLaVA-NeXT (per view) and Qwen-VL (merged
              windows) token order is not raster order, so "even" means even in token order there.
* vision   -- greedy coverage of the vision tokens only: the alpha * Q term of MMTok alone.
* text     -- greedy coverage of the question's tokens only: P alone; an image whose question has no
              content tokens falls back to `vision`. P saturates once each content token's best match
              is picked; later picks gain nothing and take the lowest allowed indices.
* divprune -- max-min diversity of U (DivPrune, Alvar et al. 2025): greedy farthest-point selection
              under cosine distance. The first pick is the token farthest from the mean of the
              allowed features (deterministic, and not biased towards index 0); each next pick is the
              token whose nearest already-picked token is farthest (ties: lowest index).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .selection import (
    ALPHA,
    TAU_T_LLAVA,
    TAU_V,
    Selection,
    as_mask,
    coverage_matrix,
    greedy_max_coverage,
    resolve,
    select,
)

BASELINES = ("random", "uniform", "vision", "text", "divprune")
RANDOM_SEED = 0


def choose(
    method: str,
    vision: torch.Tensor,
    features: torch.Tensor,
    text: torch.Tensor | None = None,
    *,
    k: int | Sequence[int] | torch.Tensor,
    vision_mask: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    alpha: float = ALPHA,
    tau_t: float = TAU_T_LLAVA,
    tau_v: float = TAU_V,
    seed: int | Sequence[int] = RANDOM_SEED,
) -> Selection:
    """Kept token indices per image (ascending, and in pick order) for `method` ("mmtok" or one of `BASELINES`).

    Arguments as in `selection.select`; `seed` (one for all images, or one per image) is used by "random" only.
    """
    if method == "mmtok":
        return select(
            vision, features, text, k=k, vision_mask=vision_mask, allowed=allowed, text_mask=text_mask,
            alpha=alpha, tau_t=tau_t, tau_v=tau_v,
        )
    if method not in BASELINES:
        raise ValueError(f"unknown selection method {method!r}")
    if method == "random":
        seeds = torch.tensor([seed] * vision.shape[0] if isinstance(seed, int) else list(seed), dtype=torch.long)
        if len(seeds) != vision.shape[0]:
            raise ValueError(f"need one seed per image ({vision.shape[0]}), got {len(seeds)}")

    def pick(
        rows: torch.Tensor | slice, k_rows: torch.Tensor, allowed_rows: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if method == "random":
            return _random(k_rows, allowed_rows, seeds[rows if isinstance(rows, slice) else rows.cpu()].tolist())
        if method == "uniform":
            return _uniform(k_rows, allowed_rows)
        if method == "divprune":
            return _divprune(features[rows], k_rows, allowed_rows)
        t = None if text is None else text[rows]
        tm = None if t is None or text_mask is None else text_mask[rows]
        vm = None if vision_mask is None else vision_mask[rows]
        if method == "vision" or t is None or t.shape[1] == 0:
            cov = coverage_matrix(vision[rows], features[rows], None, vision_mask=vm, alpha=alpha, tau_v=tau_v)
        else:  # "text": P alone, or alpha * Q for images without text rows
            cov = coverage_matrix(vision[rows], features[rows], t, vision_mask=vm, text_mask=tm, alpha=1.0,
                                  tau_t=tau_t, tau_v=tau_v)
            has_text = as_mask(tm, t.shape[:2], t.device).any(-1)
            # Zero the vision rows where there is text (P alone); keep alpha * Q where there is none.
            # `cov` is a fresh float32 tensor, so scaling it in place copies nothing.
            cov[:, t.shape[1]:] *= torch.where(has_text, 0.0, alpha).to(cov.dtype)[:, None, None]
        return greedy_max_coverage(cov, k_rows, allowed_rows)

    return resolve(vision, k, vision_mask, allowed, pick)


def _top_k(scores: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, max k) picks: each row's k highest-scoring allowed columns, -1 where none (ties: lowest index)."""
    steps = int(k.max()) if k.numel() else 0
    masked = scores.masked_fill(~allowed, float("-inf"))
    order = torch.sort(masked, dim=-1, descending=True, stable=True)
    picks, values = order.indices[:, :steps], order.values[:, :steps]
    none = (torch.arange(steps, device=k.device) >= k[:, None]) | torch.isneginf(values)
    return picks.masked_fill(none, -1)


def _random(k: torch.Tensor, allowed: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    # Each row's draw on the CPU from its own generator: the same on every device and independent of
    # the batch an image lands in (a batch costs one small draw per image).
    n = allowed.shape[1]
    scores = torch.stack([torch.rand(n, generator=torch.Generator().manual_seed(s)) for s in seeds])
    picks = _top_k(scores.to(allowed.device), k, allowed)
    # A random draw has no meaningful order: hand the picks back in index order ("no pick", -1, last).
    ascending = torch.sort(picks.masked_fill(picks < 0, n), dim=-1).values
    return ascending.masked_fill_(ascending == n, -1)


def _uniform(k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    steps = int(k.max()) if k.numel() else 0
    count = allowed.sum(-1, keepdim=True)
    i = torch.arange(steps, device=k.device)[None, :]
    ranks = (2 * i + 1) * count // (2 * k[:, None]).clamp_min(1)
    # Positions of the allowed tokens, ascending, first in each row (stable sort of "not allowed").
    positions = torch.sort((~allowed).to(torch.uint8), dim=-1, stable=True).indices
    picks = positions.gather(1, ranks.clamp(max=allowed.shape[1] - 1))
    return picks.masked_fill((i >= k[:, None]) | (ranks >= count), -1)


def _divprune(features: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    bsz, n, _ = features.shape
    steps = int(k.max()) if k.numel() else 0
    u = F.normalize(features.float(), dim=-1)
    dist = 1 - u @ u.transpose(1, 2)  # cosine distance, (B, n, n)
    weights = allowed.float()[:, :, None]
    mean = F.normalize((u * weights).sum(1) / weights.sum(1).clamp_min(1), dim=-1)
    nearest = 1 - (u @ mean[:, :, None]).squeeze(-1)  # step 0: distance to the mean
    blocked = torch.zeros(bsz, n, device=features.device).masked_fill_(~allowed, float("-inf"))
    picks = torch.full((bsz, steps), -1, dtype=torch.long, device=features.device)
    for step in range(steps):
        score = nearest + blocked
        best, picks[:, step] = score.max(-1)  # max returns the first maximal index: lowest-index ties
        picks[:, step].masked_fill_(torch.isneginf(best) | (step >= k), -1)
        column = dist.gather(2, picks[:, step].clamp_min(0).view(bsz, 1, 1).expand(bsz, n, 1)).squeeze(-1)
        nearest = column if step == 0 else torch.minimum(nearest, column)
        blocked.scatter_(1, picks[:, step].clamp_min(0).view(bsz, 1), float("-inf"))
    return picks
