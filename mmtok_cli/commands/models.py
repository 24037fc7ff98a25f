"""`mmtok models`: the supported model families."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List the supported model families, with their defaults and an example checkpoint each.

    The family is detected from the checkpoint's config.json (model_type), so any checkpoint of a
    listed family works, including local folders.
    """
    from ..models import ADAPTERS
    from ..selection import ALPHA, TAU_V

    rows = [
        {
            "family": a.family,
            "model_types": list(a.model_types),
            "tau_t": a.tau_t,
            "tau_v": TAU_V,
            "alpha": ALPHA,
            "tokens": a.budget,
            "example": a.example,
        }
        for a in ADAPTERS
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    for row in rows:
        sys.stdout.write(
            f"{row['family']:<12} e.g. {row['example']}\n"
            f"{'':<12} config model_type: {', '.join(row['model_types'])} · tau_t {row['tau_t']} · "
            f"tau_v {row['tau_v']} · alpha {row['alpha']}\n"
            f"{'':<12} --tokens: {row['tokens']}\n"
        )
