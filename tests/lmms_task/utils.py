"""Document handling for the local POPE-format task `mmtok_pope_local` (see mmtok_pope_local.yaml)."""

import os
from pathlib import Path

from PIL import Image

from mmtok_cli.metrics import is_correct, pope


def doc_to_visual(doc):
    return [Image.open(Path(os.environ.get("MMTOK_POPE_IMAGES", "images")) / doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    from lmms_eval.tasks.pope.utils import pope_doc_to_text

    # lmms-eval's pope task's own prompt; POPE's files name the question 'text', its dataset 'question'
    return pope_doc_to_text({"question": doc["text"]}, lmms_eval_specific_kwargs or {})


def process_results(doc, results):
    prediction = results[0]
    return {"accuracy": float(is_correct(prediction, doc["label"], doc["text"])),
            "pope_f1": (prediction, doc["label"])}


def pope_f1(pairs):
    predictions, labels = zip(*pairs)
    return pope(predictions, labels)["f1"]
