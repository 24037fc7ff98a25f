"""mmtok as an lmms-eval model (`python -m lmms_eval --model mmtok`), on the shipped demo model.

The end-to-end test runs lmms-eval's own command over a local POPE-format task (tests/lmms_task, which asks
as lmms-eval's `pope` task does, post-prompt included) and compares it with `mmtok eval --post-prompt` on the same
file: same accuracy, same answer per question. lmms-eval exits 0
even when an evaluation fails, so the test reads its results and samples files, never its exit status.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmtok_cli.synth import generate

from .device import TEST_DEVICE

TASK_DIR = Path(__file__).parent / "lmms_task"
HAS_LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None
needs_lmms_eval = pytest.mark.skipif(
    not HAS_LMMS_EVAL, reason="lmms-eval is not installed (CI installs it: pip install --no-deps 'lmms-eval>=0.7,<0.8' "
    "&& pip install -e '.[lmms]')")
BATCH = 4
TOKENS = 8
POPE_POST_PROMPT = "Answer the question using a single word or phrase."
"""What lmms-eval's pope task appends to each question, after a newline."""


def test_entry_point_module_imports_no_ml_stack():
    # lmms-eval loads every plugin's entry point whenever it lists its models: ours must cost nothing.
    code = ("import importlib.util, sys, mmtok_cli.lmms as plugin\n"
            "manifest = plugin.manifest() if importlib.util.find_spec('lmms_eval') else None\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "print(heavy, manifest and manifest.simple_class_path)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "[]", out
    if HAS_LMMS_EVAL:
        assert out.split()[-1] == "mmtok_cli.lmms.model.Mmtok"


@needs_lmms_eval
def test_lmms_eval_finds_the_plugin_by_name():
    from lmms_eval.models import get_model

    from mmtok_cli.lmms.model import Mmtok

    assert get_model("mmtok") is Mmtok


@pytest.fixture(scope="module")
def pope_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pope")
    generate(folder, 3, seed=1)
    (folder / "pope_local.json").write_text((folder / "pope_random.json").read_text())
    return folder


def _task_kwargs(path):
    """A task yaml's `lmms_eval_specific_kwargs` (its `!function` tags read as plain strings)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(Path(path).read_text(), Loader=Loader)["lmms_eval_specific_kwargs"]


@needs_lmms_eval
def test_local_task_asks_as_lmms_evals_pope_task():
    import lmms_eval.tasks.pope as pope

    ours = _task_kwargs(TASK_DIR / "mmtok_pope_local.yaml")
    assert ours["default"] == _task_kwargs(Path(pope.__path__[0]) / "pope.yaml")["default"]
    assert ours["default"]["post_prompt"] == "\n" + POPE_POST_PROMPT


@needs_lmms_eval
def test_lmms_eval_pope_answers_equal_mmtok_eval_with_its_post_prompt(pope_set, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "MMTOK_POPE_IMAGES": str(pope_set / "images")}
    out = tmp_path / "lmms-out"
    run = subprocess.run([
        sys.executable, "-m", "lmms_eval", "--model", "mmtok",
        "--model_args", f"pretrained=demo,tokens={TOKENS},method=mmtok,device=cpu,dtype=float32",
        "--tasks", "mmtok_pope_local", "--include_path", str(TASK_DIR), "--batch_size", str(BATCH),
        "--output_path", str(out), "--log_samples",
    ], cwd=pope_set, env=env, capture_output=True, text=True, timeout=600)  # its exit status says nothing
    results = sorted(out.rglob("*_results.json"))
    samples = sorted(out.rglob("*_samples_mmtok_pope_local.jsonl"))
    assert results and samples, f"lmms-eval wrote no results under {out}: {(run.stdout + run.stderr)[-3000:]}"
    lmms = json.loads(results[-1].read_text())["results"]["mmtok_pope_local"]
    answered = {s["doc_id"]: s["filtered_resps"] for s in map(json.loads, samples[-1].read_text().splitlines())}

    report, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    subprocess.run([
        sys.executable, "-m", "mmtok_cli", "eval", str(pope_set / "pope_local.json"),
        "--images", str(pope_set / "images"),
        "--model", "demo", "--tokens", str(TOKENS), "--methods", "mmtok", "--device", TEST_DEVICE, "--dtype", "float32",
        "--batch-size", str(BATCH), "--max-new-tokens", "10", "--json", str(report), "--predictions", str(preds),
        "--post-prompt", POPE_POST_PROMPT,
    ], env=env, check=True, capture_output=True, text=True, timeout=600)
    assert json.loads(report.read_text())["post_prompt"] == POPE_POST_PROMPT
    row = json.loads(report.read_text())["results"][1]
    assert (row["method"], row["tokens"], row["failed"]) == ("mmtok", TOKENS, 0)
    ours = [r["prediction"] for r in map(json.loads, preds.read_text().splitlines()) if r["method"] == "mmtok"]

    assert [answered[i] for i in range(len(ours))] == ours
    assert lmms["accuracy,none"] == pytest.approx(row["accuracy"], abs=1e-4)
    assert lmms["pope_f1,none"] == pytest.approx(row["f1"], abs=1e-4)


# -- the model class, driven the way lmms-eval's evaluator drives it ----------------------------------------------


@pytest.fixture(scope="module")
def model():
    if not HAS_LMMS_EVAL:
        pytest.skip("lmms-eval is not installed")
    from mmtok_cli.lmms.model import Mmtok

    return Mmtok(pretrained="demo", tokens=TOKENS, device=TEST_DEVICE, dtype="float32", batch_size=2)


def _requests(model, docs, gen_kwargs, visual=lambda doc: [doc["image"]]):
    from lmms_eval.api.instance import Instance

    model.task_dict = {"t": {"test": docs}}
    return [Instance("generate_until", (doc["text"], dict(gen_kwargs), visual, i, "t", "test"), idx=0,
                     metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, doc in enumerate(docs)]


@needs_lmms_eval
def test_generate_until_keeps_order_and_honours_the_task(model, pope_set):
    lines = [json.loads(x) for x in (pope_set / "pope_adversarial.json").read_text().splitlines()][:5]
    docs = [{"image": Image.open(pope_set / "images" / x["image"]), "text": x["text"]} for x in lines]
    reference = [model.engine.ask(d["image"].convert("RGB"), d["text"], tokens=TOKENS, max_new_tokens=10).answer
                 for d in docs]
    assert model.generate_until(_requests(model, docs, {"max_new_tokens": 10})) == reference  # 5 requests, batches of 2
    # max_new_tokens and until come from the task's generation arguments
    one = [model.engine.ask(d["image"].convert("RGB"), d["text"], tokens=TOKENS, max_new_tokens=1).answer for d in docs]
    assert model.generate_until(_requests(model, docs, {"max_new_tokens": 1})) == one
    cut = model.generate_until(_requests(model, docs, {"max_new_tokens": 10, "until": ["es", "o"]}))
    assert cut == [a.split("es")[0].split("o")[0] for a in reference] and cut != reference


@needs_lmms_eval
@pytest.mark.parametrize("visual, count", [(lambda doc: [doc["image"], doc["image"]], 2), (lambda doc: [], 0),
                                           (lambda doc: ["clip.mp4"], 1)])
def test_a_request_without_exactly_one_image_is_an_error(model, visual, count):
    from mmtok_cli.errors import MmtokError

    docs = [{"image": Image.new("RGB", (32, 32)), "text": "Is there a cat?"}]
    with pytest.raises(MmtokError, match=f"exactly one image per question, this request has {count} visual"):
        model.generate_until(_requests(model, docs, {}, visual))


@needs_lmms_eval
def test_loglikelihood_and_bad_model_args_are_one_line(model):
    from mmtok_cli.errors import UsageError
    from mmtok_cli.lmms.model import Mmtok

    with pytest.raises(NotImplementedError, match="mmtok only generates"):
        model.loglikelihood([])
    with pytest.raises(UsageError, match="unknown model_args for mmtok: budgett"):
        Mmtok(pretrained="demo", budgett=3)
    with pytest.raises(UsageError, match="unknown --method 'best'"):
        Mmtok(pretrained="demo", method="best")


@needs_lmms_eval
def test_post_prompt_model_arg_is_appended_to_each_request(model, pope_set):
    from mmtok_cli.errors import UsageError
    from mmtok_cli.lmms.model import Mmtok

    extra = "Say yes or no."
    with_it = Mmtok(pretrained="demo", tokens=TOKENS, device=TEST_DEVICE, dtype="float32", batch_size=2,
                    post_prompt=extra)
    lines = [json.loads(x) for x in (pope_set / "pope_random.json").read_text().splitlines()][:3]
    docs = [{"image": Image.open(pope_set / "images" / x["image"]), "text": x["text"]} for x in lines]
    direct = [model.engine.ask(d["image"].convert("RGB"), d["text"], tokens=TOKENS, max_new_tokens=10,
                               post_prompt=extra).answer for d in docs]
    plain = model.generate_until(_requests(model, docs, {"max_new_tokens": 10}))
    assert with_it.generate_until(_requests(with_it, docs, {"max_new_tokens": 10})) == direct != plain
    with pytest.raises(UsageError, match="--post-prompt is empty"):
        Mmtok(pretrained="demo", post_prompt="")
