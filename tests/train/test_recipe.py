import pytest

from phiforge.train import RecipeError, TrainConfig, from_dict, load_recipe, lr_at


def test_unknown_field_is_one_line_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("lr: 1e-3\nlearning_rate: 3\n")
    with pytest.raises(RecipeError, match=r"r.yaml: unknown field 'learning_rate'") as e:
        load_recipe(p)
    assert "\n" not in str(e.value)
    p.write_text("phases:\n  - name: a\n    tokens: 10\n    datasets: [{path: x, wieght: 2}]\n")
    with pytest.raises(RecipeError, match=r"phases\[0\]\.datasets\[0\]: unknown field 'wieght'"):
        load_recipe(p)


def test_bad_values_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="schedule: 'linear'"):
        from_dict({"schedule": "linear"})
    with pytest.raises(RecipeError, match="seq_len: expected int, got 'long'"):
        from_dict({"seq_len": "long"})
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("lr: [1\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_overrides_dotted_and_lists(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(
        "phases:\n  - {name: a, tokens: 100, datasets: [x]}\n  - {name: b, tokens: 5, datasets: [y]}\n"
    )
    cfg = load_recipe(p, ["lr=1e-3", "phases.1.tokens=2e6", "model_overrides.hidden_size=64", "fsdp=true"])
    assert cfg.lr == 1e-3 and cfg.fsdp is True
    assert cfg.phases[1].tokens == 2_000_000 and cfg.phases[0].datasets[0].path == "x"
    assert cfg.model_overrides == {"hidden_size": 64}
    with pytest.raises(RecipeError, match="no list item '7'"):
        load_recipe(p, ["phases.7.tokens=1"])
    with pytest.raises(RecipeError, match="unknown field 'nope'"):
        load_recipe(p, ["nope=1"])


def test_steps_from_token_budget():
    cfg = from_dict({"seq_len": 128, "micro_batch": 4, "grad_accum": 2, "phases": [
        {"tokens": 1024, "datasets": ["a"]}, {"tokens": 1025, "datasets": ["a"]}]})  # fmt: skip
    assert cfg.tokens_per_step(1) == 1024 and cfg.phase_steps(1) == [1, 2]
    assert cfg.phase_steps(2) == [1, 1]


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules(schedule):
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, schedule=schedule, decay_fraction=0.2)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    if schedule == "cosine":
        assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
        assert lrs[54] == pytest.approx(0.55, abs=0.02)  # half way through the cosine
    elif schedule == "wsd":
        assert all(x == 1.0 for x in lrs[9:82]) and lrs[-1] == pytest.approx(0.1)
        assert all(
            a > b for a, b in zip(lrs[82:], lrs[83:], strict=False)
        )  # linear decay over the last 18 steps
    else:
        assert all(x == 1.0 for x in lrs[9:])
