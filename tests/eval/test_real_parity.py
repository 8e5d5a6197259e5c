"""lm-eval driving transformers on the SmolLM2-135M-Instruct GGUF (transformers dequantizes it to fp32) gives
the same per-item log-likelihoods and accuracy as `phiforge eval` on the same file, dequantized path.

ARC-Easy goes through lm-eval's own built-in task file (its prompt, its choices) pointed at a local copy of
the data; HellaSwag through a local task file holding phiforge's prompts (the local copy is preprocessed
already, so lm-eval's own preprocessing cannot run on it). Both 0-shot.

PHIFORGE_PARITY_LIMIT=N runs N items per task instead of 5 (benchmarks/RESULTS.md states such a run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local json files: never touch the network
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' GGUF loading needs it
pytest.importorskip("gguf")

import phiforge.eval as ev  # noqa: E402
from phiforge.eval.tasks import registry  # noqa: E402
from phiforge.infer.engine import Engine  # noqa: E402
from phiforge.infer.load import resolve  # noqa: E402
from phiforge.model import CheckpointError  # noqa: E402

LIMIT = int(os.environ.get("PHIFORGE_PARITY_LIMIT", "5"))
TASKS = ("arc_easy", "hellaswag")

HELLASWAG_YAML = """task: pf_hellaswag
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
num_fewshot: 0
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def real() -> Path:
    try:
        return resolve("smollm2-135m-instruct")
    except CheckpointError as e:
        pytest.skip(str(e))


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _task_files(bench: Path, d: Path) -> Path:
    """lm-eval task files over the same items phiforge's loaders read from `bench`."""
    builtin = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    arc = []
    for line in (bench / "arc_easy" / "test.jsonl").read_text().splitlines()[:LIMIT]:
        r = json.loads(line)
        q = r["question"]
        arc.append(
            {
                "question": q["stem"],
                "choices": {k: [c[k] for c in q["choices"]] for k in ("text", "label")},
                "answerKey": r["answerKey"],
            }
        )
    hs = [
        {"query": it.pairs[0][0], "choices": [c[1:] for _, c in it.pairs], "gold": it.gold}
        for it in registry()["hellaswag"].load(bench, LIMIT, 0)
    ]
    tasks = d / "tasks"
    tasks.mkdir()
    (tasks / "pf_arc_easy.yaml").write_text(
        f"include: {builtin}\ntask: pf_arc_easy\ndataset_path: json\ndataset_name: null\ntag: []\n"
        "training_split: null\nvalidation_split: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {_write_jsonl(d / 'arc.jsonl', arc)}\n"
    )
    (tasks / "pf_hellaswag.yaml").write_text(HELLASWAG_YAML.format(path=_write_jsonl(d / "hs.jsonl", hs)))
    return tasks


@pytest.mark.slow  # minutes on a busy box: transformers dequantizes the GGUF, then 2 x 40 items
def test_lm_eval_transformers_same_scores_as_phiforge(real, bench, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hf = HFLM(pretrained=str(real.parent), gguf_file=real.name, dtype="float32", device="cpu", batch_size=8)
    theirs = lm_eval.simple_evaluate(
        model=hf,
        tasks=[f"pf_{t}" for t in TASKS],
        task_manager=TaskManager(include_path=str(_task_files(bench, tmp_path)), include_defaults=False),
        num_fewshot=0,
        log_samples=True,
    )
    ours = ev.run(
        real,
        list(TASKS),
        data_dir=bench,
        limit=LIMIT,
        shots=dict.fromkeys(TASKS, 0),
        out=tmp_path / "ours",
        engine=Engine.load(real, dtype=torch.float32),  # the dequantized path, as transformers sees the file
        show_progress=False,
    )
    worst = 0.0
    for t in TASKS:
        per = [
            json.loads(x) for x in (tmp_path / "ours/eval/samples" / f"{t}.jsonl").read_text().splitlines()
        ]
        samples = sorted(theirs["samples"][f"pf_{t}"], key=lambda s: s["doc_id"])
        assert len(per) == len(samples) == LIMIT
        for s, mine in zip(samples, per, strict=True):
            assert s["arguments"][0][0].endswith(mine["context_tail"])  # the very same prompt
            lls = [r[0][0] for r in s["resps"]]
            assert lls == pytest.approx(mine["lls"], abs=1e-3), (t, s["doc_id"])
            worst = max(worst, *(abs(a - b) for a, b in zip(lls, mine["lls"], strict=True)))
        res, m = theirs["results"][f"pf_{t}"], ours["tasks"][t]["metrics"]
        print(
            f"{t}: n={LIMIT} lm-eval+transformers acc {res['acc,none']:.4f} acc_norm {res['acc_norm,none']:.4f}"
            f" | phiforge acc {m['acc']['value']:.4f} acc_norm {m['acc_norm']['value']:.4f}"
        )
        assert res["acc,none"] == m["acc"]["value"]
        assert res["acc_norm,none"] == m["acc_norm"]["value"]
    print(f"largest per-option log-likelihood difference: {worst:.2e}")
