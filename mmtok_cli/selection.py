"""MMTok selection: coverage matrices and batched greedy maximum coverage (DESIGN.md §2).

Pure tensor code: it knows nothing about models. All shapes carry a leading batch dimension;
images with fewer tokens (or questions with fewer text tokens) are padded and described by masks,
so one call selects for a whole batch without a Python loop over images.

Notation (per image): V (n x d) projected vision tokens, U (n x e) pre-projector vision features,
T (m x d) embedded question content tokens.

    P = softmax_row(cos(T, V) / tau_t) / m        text  -> vision coverage   (m x n)
    Q = softmax_row(cos(U, U) / tau_v) / n        vision -> vision coverage  (n x n)
    C = [P ; alpha * Q]                                                      ((m+n) x n)
    f(S) = sum_r max_{j in S} C[r, j]

Greedy: k times pick the allowed, unselected column with the largest gain
sum_r max(0, C[r, j] - best[r]) (ties: lowest index), then best = max(best, C[:, j]).
The kept indices come back ascending (the model gets the tokens in their original order); the pick
order comes back alongside, for showing which tokens mattered first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ALPHA = 0.5
TAU_V = 0.2
TAU_T_LLAVA = 0.02
TAU_T_QWEN = 0.01


@dataclass
class Selection:
    """Result of `select` for a batch of images."""

    indices: list[torch.Tensor]
    """Per image: kept token indices (int64, ascending, on the input device)."""
    order: list[torch.Tensor]
    """Per image: the same indices in the order they were picked (greedy methods); index order where
    nothing was picked (keep-all, fewer allowed than k) and for the non-greedy baselines."""
    gains: torch.Tensor
    """(B, steps) marginal gain of each greedy pick; NaN where no pick was made (padding, keep-all)."""
    rows: list[torch.Tensor | None] | None = None
    """Per image, for methods that make new features (`visionzip`): the exact (k, d) rows the language model
    receives, in order, or None where the image keeps V's rows at `indices`; None: no image has any.
    `models.base.merged_feed` hands them to any adapter."""

    @property
    def counts(self) -> list[int]:
        return [int(i.numel()) for i in self.indices]


def as_mask(mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """A bool mask on `device`; None means everything is present."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return mask.to(device=device, dtype=torch.bool)


def _per_image(k: int | Sequence[int] | torch.Tensor, bsz: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(k, device=device).expand(bsz)


def _masked_row_softmax(logits: torch.Tensor, col_valid: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Row softmax over valid columns only; rows that are padding become all zero."""
    logits = logits.masked_fill(~col_valid[:, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.where(rows[:, :, None] & col_valid[:, None, :], probs, torch.zeros((), device=probs.device))


def coverage_matrix(
    vision: torch.Tensor,
    features: torch.Tensor,
    text: torch.Tensor | None = None,
    *,
    vision_mask: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    alpha: float = ALPHA,
    tau_t: float = TAU_T_LLAVA,
    tau_v: float = TAU_V,
) -> torch.Tensor:
    """Build C = [P ; alpha * Q] for a batch, in float32.

    Args:
        vision: (B, n, d) projected vision tokens V.
        features: (B, n, e) pre-projector features U aligned with `vision`.
        text: (B, m, d) embedded question tokens T, or None to drop the text term.
        vision_mask: (B, n) bool, True where a token exists (False = batch padding).
        text_mask: (B, m) bool, True where a text token exists. An image whose text rows are all
            padding simply has no text term.
    Returns:
        (B, m + n, n) float32; padding rows and columns are zero.
    """
    if vision.ndim != 3 or features.ndim != 3 or vision.shape[:2] != features.shape[:2]:
        raise ValueError(f"vision {tuple(vision.shape)} and features {tuple(features.shape)} must be (B, n, *)")
    vision_mask = as_mask(vision_mask, vision.shape[:2], vision.device)
    n_valid = vision_mask.sum(-1).clamp_min(1).float()

    u = F.normalize(features.float(), dim=-1)
    q = _masked_row_softmax(u @ u.transpose(1, 2) / tau_v, vision_mask, vision_mask)
    q = q * (alpha / n_valid)[:, None, None]
    if text is None or text.shape[1] == 0:
        return q

    text_mask = as_mask(text_mask, text.shape[:2], vision.device)
    t = F.normalize(text.float(), dim=-1)
    v = vision.float()
    # Divide by |V| after the product instead of normalising V: V is the widest tensor (d = 4096
    # for 7B models) and writing a normalised copy of it cost more than the whole product.
    v_norm = v.norm(dim=-1).clamp_min(1e-12)
    cos_tv = (t @ v.transpose(1, 2)) / v_norm[:, None, :]
    p = _masked_row_softmax(cos_tv / tau_t, vision_mask, text_mask)
    p = p / text_mask.sum(-1).clamp_min(1).float()[:, None, None]
    return torch.cat([p, q], dim=1)


# On a CPU the greedy loop is bound by memory traffic: every step re-reads C. Running it over
# groups of images whose C fits in cache is ~2.5x faster per image at batch 16 (n=576) than
# one pass over the whole batch. GPUs take the whole batch at once.
_CPU_CACHE_BYTES = 8 << 20


def greedy_max_coverage(
    coverage: torch.Tensor, k: torch.Tensor | Sequence[int] | int, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy maximisation of f(S) = sum_r max_{j in S} C[r, j] for every image at once.

    Args:
        coverage: (B, R, n) non-negative coverage matrix.
        k: picks per image (int or one per image).
        allowed: (B, n) bool, columns that may be picked.
    Returns:
        picks (B, max k) int64 in pick order, -1 where an image made no pick at that step
        (its k reached or nothing allowed left); gains (B, max k), NaN where no pick.
    """
    bsz, rows, n = coverage.shape
    device = coverage.device
    k_t = _per_image(k, bsz, device)
    allowed = as_mask(allowed, (bsz, n), device)
    group = bsz if device.type != "cpu" else max(1, _CPU_CACHE_BYTES // (rows * n * 4))
    if group >= bsz:
        return _greedy(coverage.float(), k_t, allowed)
    parts = [
        _greedy(coverage[i : i + group].float(), k_t[i : i + group], allowed[i : i + group])
        for i in range(0, bsz, group)
    ]
    steps = max(p.shape[1] for p, _ in parts)
    picks = torch.cat([F.pad(p, (0, steps - p.shape[1]), value=-1) for p, _ in parts])
    gains = torch.cat([F.pad(g, (0, steps - g.shape[1]), value=float("nan")) for _, g in parts])
    return picks, gains


def _greedy(coverage: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Written for few kernel launches (8 per step for the whole batch, no host sync in the loop), as
    # on a GPU the loop is launch-bound at small batch: every image takes a step each round, even one
    # whose k is reached or that has nothing left to pick (rows never interact), and those picks are
    # discarded once, after the loop.
    bsz, rows, n = coverage.shape
    device = coverage.device
    steps = int(k.max().item()) if bsz else 0
    best = torch.zeros(bsz, rows, 1, device=device)
    # Added to the gains: -inf on columns that may not, or no longer, be picked.
    blocked = torch.zeros(bsz, n, device=device).masked_fill_(~allowed, float("-inf"))
    picks = torch.empty(steps, bsz, dtype=torch.long, device=device)  # step-major: each step writes a contiguous row
    gains = torch.empty(steps, bsz, device=device)
    scratch = torch.empty_like(coverage)  # reused every step: no allocation in the loop
    gain = torch.empty(bsz, n, device=device)
    for step in range(steps):
        torch.sub(coverage, best, out=scratch)
        torch.sum(scratch.clamp_min_(0), dim=1, out=gain)
        gain.add_(blocked)
        # max returns the first maximal index: the lowest-index tie rule.
        torch.max(gain, dim=-1, out=(gains[step], picks[step]))
        column = coverage.gather(2, picks[step].view(bsz, 1, 1).expand(bsz, rows, 1))
        torch.maximum(best, column, out=best)
        blocked.scatter_(1, picks[step].view(bsz, 1), float("-inf"))
    picks, gains = picks.T.contiguous(), gains.T.contiguous()
    # No pick: past the image's k, or nothing allowed was left (the best gain was -inf).
    none = (torch.arange(steps, device=device) >= k[:, None]) | torch.isneginf(gains)
    return picks.masked_fill_(none, -1), gains.masked_fill_(none, float("nan"))


def select(
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
) -> Selection:
    """Choose up to k vision tokens per image with MMTok (see module docstring).

    Checked against the authors' selector (Ironieser/MMTok at d1522cd, mmtok/core/semantic_selector.py,
    `mm_coverage_selection`): the same picks in the same order as a float32 transcription of it on random
    576-token images, k = 4, 16, 64, tau_t 0.02 and 0.01 (tests/test_baselines.py), and against the plain float64
    reference of DESIGN.md §2 (tests/reference.py).

    Args:
        vision, features, text, vision_mask, text_mask: as in `coverage_matrix`.
        k: vision tokens to keep, one int for all images or one per image. An image with
            k >= n keeps all its n tokens (allowed or not), so pruning is a no-op there.
        allowed: (B, n) bool, tokens that may be picked (default: every existing token). If fewer
            than k are allowed, all allowed tokens are kept.
    Returns:
        A `Selection`: ascending kept indices per image, and the same indices in greedy pick order.
    """
    def pick(rows: torch.Tensor | slice, k_rows: torch.Tensor, allowed_rows: torch.Tensor):
        cov = coverage_matrix(
            vision[rows], features[rows], None if text is None else text[rows],
            vision_mask=None if vision_mask is None else vision_mask[rows],
            text_mask=None if text_mask is None else text_mask[rows], alpha=alpha, tau_t=tau_t, tau_v=tau_v,
        )
        return greedy_max_coverage(cov, k_rows, allowed_rows)

    return resolve(vision, k, vision_mask, allowed, pick)


Picker = Callable[[torch.Tensor | slice, torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def resolve(
    vision: torch.Tensor,
    k: int | Sequence[int] | torch.Tensor,
    vision_mask: torch.Tensor | None,
    allowed: torch.Tensor | None,
    pick: Picker,
) -> Selection:
    """The edge rules every selection method shares, around its `pick`.

    Images with k >= n keep everything; images with fewer than k allowed tokens keep all allowed ones;
    only the others are handed to `pick(rows, k_rows, allowed_rows)`, which returns picks (R, steps)
    in pick order with -1 for "no pick" (or picks and their gains). Indices come back ascending, and
    in pick order as `Selection.order` (index order for the images that kept everything or all allowed).
    """
    bsz, n, _ = vision.shape
    device = vision.device
    vision_mask = as_mask(vision_mask, (bsz, n), device)
    allowed = as_mask(allowed, (bsz, n), device) & vision_mask
    k_t = _per_image(k, bsz, device)
    if bool((k_t < 0).any()):
        raise ValueError("k must be >= 0")
    keep_all = k_t >= vision_mask.sum(-1)
    keep_allowed = ~keep_all & (k_t >= allowed.sum(-1))
    chosen = (keep_all[:, None] & vision_mask) | (keep_allowed[:, None] & allowed)

    gains = torch.full((bsz, 0), float("nan"), device=device)
    picks = None
    pruning = ~keep_all & ~keep_allowed
    if bool(pruning.any()):
        # Only images that really prune take part in the matrix build and the greedy loop; when
        # all do (the usual case) a full slice keeps views instead of copying V.
        rows = slice(None) if bool(pruning.all()) else pruning.nonzero().flatten()
        picked_out = pick(rows, k_t[rows], allowed[rows])
        picks, row_gains = picked_out if isinstance(picked_out, tuple) else (picked_out, None)
        picked = torch.zeros(picks.shape[0], n + 1, dtype=torch.bool, device=device)
        picked.scatter_(1, torch.where(picks < 0, n, picks), True)  # "no pick" lands in spare column n
        chosen[rows] |= picked[:, :n]
        gains = torch.full((bsz, picks.shape[1]), float("nan"), device=device)
        if row_gains is not None:
            gains[rows] = row_gains
    # One stable sort puts each row's chosen positions first, in ascending order: one launch and one
    # sync for the batch instead of a nonzero() (launch + sync) per image.
    ascending = torch.sort((~chosen).to(torch.uint8), dim=-1, stable=True).indices
    in_order = ascending
    if picks is not None and picks.shape[1]:
        # The pruning rows' picks, "no pick" moved last (a stable sort, no sync): each row's first
        # count entries are its kept indices in pick order. Fewer picks than n: k < allowed <= n.
        last = torch.sort((picks < 0).to(torch.uint8), dim=-1, stable=True).indices
        in_order = ascending.clone()
        in_order[rows, : picks.shape[1]] = picks.gather(1, last)
    counts = chosen.sum(-1).tolist()
    indices = [ascending[b, :c] for b, c in enumerate(counts)]
    order = [in_order[b, :c] for b, c in enumerate(counts)]
    return Selection(indices=indices, order=order, gains=gains)
