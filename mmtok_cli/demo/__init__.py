"""The demo model (`--model demo`): a small LLaVA-architecture checkpoint trained on `mmtok synth`
scenes, shipped with the package so the main job runs offline with real answers (see train.py)."""

from pathlib import Path

NAME = "demo"
CHECKPOINT = Path(__file__).parent / "checkpoint"
