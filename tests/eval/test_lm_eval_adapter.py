"""phiforge inside lm-evaluation-harness: a local task YAML over a local jsonl gives the same multiple-choice
scores as phiforge's own task; rolling log-likelihood and generate_until go through the same engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # a local json file: never touch the network
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra")

import phiforge.eval as ev  # noqa: E402
import phiforge.eval.lm_eval_adapter  # noqa: E402, F401  (registers the "phiforge" model with lm-eval)
from conftest import write_jsonl  # noqa: E402
from phiforge.infer import score  # noqa: E402
from phiforge.infer.sampling import SamplingParams  # noqa: E402

ROWS = [
    {
        "query": f"Question: What should I use for chore number {i}?\n",
        "choices": [f"A broom and {i} buckets.", f"Tape {i}."],
        "gold": i % 2,
    }
    for i in range(8)
]

# the same prompt as phiforge's piqa task: "{query}Answer:" + " " + option; shots = the first docs of the
# same split minus the item itself (lm-eval's first_n sampler does exactly that on a shared split)
YAML = """task: pf_piqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}Answer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
num_fewshot: 2
fewshot_config:
  sampler: first_n
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval")
    data = write_jsonl(d / "data" / "piqa" / "piqa.jsonl", ROWS)
    (d / "tasks").mkdir()
    (d / "tasks" / "pf_piqa.yaml").write_text(YAML.format(path=data))
    return d


@pytest.fixture(scope="module")
def lm(model_dir):
    from phiforge.eval.lm_eval_adapter import PhiforgeLM

    return PhiforgeLM(path=str(model_dir))


def test_same_mc_scores_as_phiforge(model_dir, task_dir, lm):
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model="phiforge",
        model_args=f"path={model_dir}",
        tasks=["pf_piqa"],
        task_manager=TaskManager(include_path=str(task_dir / "tasks"), include_defaults=False),
        log_samples=True,
    )
    theirs = res["results"]["pf_piqa"]
    ours = ev.run(model_dir, ["piqa"], data_dir=task_dir / "data", shots={"piqa": 2}, show_progress=False)
    ours = ours["tasks"]["piqa"]
    assert ours["n"] == len(ROWS)
    assert theirs["acc,none"] == ours["metrics"]["acc"]["value"]
    assert theirs["acc_norm,none"] == ours["metrics"]["acc_norm"]["value"]
    assert theirs["acc_stderr,none"] == pytest.approx(ours["metrics"]["acc"]["stderr"])
    # and item by item, the same log-likelihoods
    ours_items = [json.loads(x) for x in _samples(model_dir, task_dir)]
    for s in sorted(res["samples"]["pf_piqa"], key=lambda s: s["doc_id"]):
        lls = [r[0][0] for r in s["resps"]]
        assert lls == pytest.approx(ours_items[s["doc_id"]]["lls"], abs=1e-4)
        assert s["arguments"][0][0] == ours_items[s["doc_id"]]["context_tail"][-len(s["arguments"][0][0]) :]


TQA = [
    {
        "question": f"What happens if you do thing {i}?",
        "mc1_targets": {"Nothing happens.": 1, f"You get {i} wishes.": 0, "You die.": 0},
        "mc2_targets": {
            "Nothing happens.": 1,
            "Nothing in particular.": 1,
            f"You get {i} wishes.": 0,
            "You die.": 0,
        },
    }
    for i in range(5)
]


def test_same_truthfulqa_scores_as_lm_evals_own_tasks(model_dir, tmp_path):
    """lm-eval's built-in truthfulqa_mc1/mc2 task files (prompt, MC2 function) pointed at a local copy of
    the data: phiforge's truthfulqa tasks give the same numbers."""
    from pathlib import Path

    from lm_eval.tasks import TaskManager

    builtin = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    hf_rows = [
        {
            "question": r["question"],
            **{
                k: {"choices": list(r[k]), "labels": list(r[k].values())}
                for k in ("mc1_targets", "mc2_targets")
            },
        }
        for r in TQA
    ]
    data = write_jsonl(tmp_path / "tqa.jsonl", hf_rows)
    (tmp_path / "data" / "truthfulqa" / "data").mkdir(parents=True)
    (tmp_path / "data" / "truthfulqa" / "data" / "mc_task.json").write_text(json.dumps(TQA))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for which in ("mc1", "mc2"):
        (tasks / f"pf_tqa_{which}.yaml").write_text(
            f"include: {builtin / f'truthfulqa_{which}.yaml'}\ntask: pf_tqa_{which}\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    validation: {data}\ntag: []\n"
        )
    res = lm_eval.simple_evaluate(
        model="phiforge",
        model_args=f"path={model_dir}",
        tasks=["pf_tqa_mc1", "pf_tqa_mc2"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
    )["results"]
    ours = ev.run(
        model_dir, ["truthfulqa_mc1", "truthfulqa_mc2"], data_dir=tmp_path / "data", show_progress=False
    )
    assert res["pf_tqa_mc1"]["acc,none"] == ours["tasks"]["truthfulqa_mc1"]["metrics"]["acc"]["value"]
    mc2 = ours["tasks"]["truthfulqa_mc2"]["metrics"]["mc2"]["value"]
    assert res["pf_tqa_mc2"]["acc,none"] == pytest.approx(mc2, abs=1e-6)
    assert 0 < mc2 < 1


def test_same_mmlu_5shot_scores_as_lm_evals_own_task(model_dir, bench, tmp_path):
    """lm-eval's built-in mmlu_abstract_algebra (description, 5 dev shots, letter options) on local rows."""
    import csv
    from pathlib import Path

    from lm_eval.tasks import TaskManager

    builtin = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "mmlu_abstract_algebra.yaml"
    files = {}
    for split, n in (("test", 6), ("dev", 5)):
        src = bench / "mmlu" / split / f"abstract_algebra_{split}.csv"
        with open(src, newline="") as f:
            rows = list(csv.DictReader(f))[:n]
        dst = tmp_path / "data" / "mmlu" / split / src.name
        dst.parent.mkdir(parents=True)
        dst.write_text(src.read_text().splitlines()[0] + "\n" + "".join(_csv_line(r) for r in rows))
        hf = [
            {
                "question": r["question"],
                "choices": [r[f"choice{i}"] for i in range(4)],
                "answer": int(r["answer"]),
            }
            for r in rows
        ]
        files[split] = write_jsonl(tmp_path / f"{split}.jsonl", hf)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "pf_mmlu.yaml").write_text(
        f"include: {builtin}\ntask: pf_mmlu\ndataset_path: json\ndataset_name: null\ntag: []\n"
        f"dataset_kwargs:\n  data_files:\n    test: {files['test']}\n    dev: {files['dev']}\nnum_fewshot: 5\n"
    )
    res = lm_eval.simple_evaluate(
        model="phiforge",
        model_args=f"path={model_dir}",
        tasks=["pf_mmlu"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        log_samples=True,
    )
    out = tmp_path / "ours"
    ours = ev.run(model_dir, ["mmlu"], data_dir=tmp_path / "data", out=out, show_progress=False)["tasks"][
        "mmlu"
    ]
    assert ours["n"] == 6 and ours["shots"] == 5
    assert res["results"]["pf_mmlu"]["acc,none"] == ours["metrics"]["acc"]["value"]
    per = [json.loads(x) for x in (out / "eval" / "samples" / "mmlu.jsonl").read_text().splitlines()]
    for smp in res["samples"]["pf_mmlu"]:
        ctx = smp["arguments"][0][0]
        assert ctx.endswith(per[smp["doc_id"]]["context_tail"])  # the same 5-shot prompt
        assert [r[0][0] for r in smp["resps"]] == pytest.approx(per[smp["doc_id"]]["lls"], abs=1e-4)


def _csv_line(r: dict) -> str:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        [r["question"], *(r[f"choice{i}"] for i in range(4)), r["answer"]]
    )
    return buf.getvalue()


def _samples(model_dir, task_dir):
    out = task_dir / "ours"
    ev.run(model_dir, ["piqa"], data_dir=task_dir / "data", shots={"piqa": 2}, out=out, show_progress=False)
    return (out / "eval" / "samples" / "piqa.jsonl").read_text().splitlines()


def test_rolling_and_generate_until(lm):
    text = "def add(a, b):\n    return a + b\n" * 3
    got = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    assert got[0] == pytest.approx(score.loglikelihood_rolling(lm.engine, [text])[0])
    out = lm.generate_until(
        [SimpleNamespace(args=("def add(a, b):", {"until": ["\n\n"], "max_gen_toks": 12}))]
    )
    ref = lm.engine.complete("def add(a, b):", SamplingParams(max_new_tokens=12, stop=["\n\n"]))
    assert out == [ref.text] and "\n\n" not in out[0]


@pytest.mark.slow  # ~40 s: lm-eval's CLI indexes its ~10k built-in task files first
def test_lm_eval_command_line_with_phiforge_model(model_dir, task_dir):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "phiforge.cli",
            "lm-eval",
            "--model",
            "phiforge",
            "--model_args",
            f"path={model_dir}",
            "--tasks",
            "pf_piqa",
            "--include_path",
            str(task_dir / "tasks"),
            "--limit",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1"},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "pf_piqa" in p.stdout and "acc_norm" in p.stdout
