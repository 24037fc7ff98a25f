"""mmtok as an lmms-eval model: `python -m lmms_eval --model mmtok --model_args pretrained=...,tokens=64`.

lmms-eval (0.7.x) finds model plugins through the entry-point group `lmms_eval.models` (pyproject.toml
points it at `manifest`) and loads every plugin's entry point whenever it indexes its models, so this
module imports nothing heavy: the model class (torch, transformers, the engine) lives in `.model` and is
imported only when a run asks for `--model mmtok`.
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "mmtok"
CLASS_PATH = "mmtok_cli.lmms.model.Mmtok"


def manifest() -> Any:
    """The entry point's payload: lmms-eval's manifest naming our model class by its import path."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
