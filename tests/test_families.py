"""Family detection and `mmtok models`: every family is listed with its defaults."""

import json

import pytest
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.errors import MmtokError
from mmtok_cli.models import ADAPTERS, adapter_class

FAMILIES = {"llava": 0.02, "llava-next": 0.02, "qwen2.5-vl": 0.01, "qwen3-vl": 0.01, "qwen3.5": 0.01,
            "qwen3.5-moe": 0.01, "gemma3": 0.02, "internvl": 0.02, "llava-onevision": 0.02}


@pytest.mark.parametrize(
    "model_type,family",
    [("llava", "llava"), ("llava_next", "llava-next"), ("qwen2_5_vl", "qwen2.5-vl"), ("qwen3_vl", "qwen3-vl"),
     ("qwen3_5", "qwen3.5"), ("qwen3_5_moe", "qwen3.5-moe"), ("gemma3", "gemma3"), ("internvl", "internvl"),
     ("llava_onevision", "llava-onevision")],
)
def test_family_from_config_model_type(model_type, family):
    assert adapter_class(model_type).family == family


def test_unsupported_model_type_names_every_family():
    with pytest.raises(MmtokError) as info:
        adapter_class("qwen2_vl")
    message = str(info.value)
    assert "\n" not in message and message.startswith("model type 'qwen2_vl' is not supported")
    for adapter in ADAPTERS:
        assert f"{adapter.family} (e.g. {adapter.example})" in message


def test_models_lists_families_with_defaults():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["family"]: r["tau_t"] for r in rows} == FAMILIES
    assert all(r["example"] and r["tokens"] and r["model_types"] for r in rows)
    text = CliRunner().invoke(app, ["models"]).stdout
    assert all(family in text for family in FAMILIES) and "Qwen/Qwen2.5-VL-7B-Instruct" in text
