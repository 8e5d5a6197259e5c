"""phiforge.stages: a stage is skipped with the same settings, redone with others, or refused (check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phiforge.stages import SettingsMismatch, Stages, read_marker


def test_done_mark_and_settings_change(tmp_path):
    st = Stages(tmp_path / "stages")
    assert st.done("a", {"n": 1}) is None
    st.mark("a", {"n": 1, "p": Path("/x"), "t": (1, 2)}, {"docs": 3}, seconds=1.234)
    # settings compare as JSON: a Path is its string, a tuple a list
    rec = st.done("a", {"n": 1, "p": "/x", "t": [1, 2]})
    assert rec == {"settings": {"n": 1, "p": "/x", "t": [1, 2]}, "result": {"docs": 3}, "seconds": 1.23}
    assert st.done("a", {"n": 2, "p": "/x", "t": [1, 2]}) is None  # other settings: redo
    assert st.record("a")["result"] == {"docs": 3}  # ... though the old record is still there
    assert st.done("b", {"n": 1}) is None
    assert read_marker(tmp_path / "stages" / "a.json") == rec


def test_marker_path_function_and_bad_markers(tmp_path):
    st = Stages(lambda name: tmp_path / name / "_stage.json")
    st.mark("raw", {}, {"ok": True})
    assert (tmp_path / "raw" / "_stage.json").is_file() and st.done("raw", {})["result"] == {"ok": True}
    (tmp_path / "raw" / "_stage.json").write_text("{half")  # not a marker: the stage runs again
    assert st.done("raw", {}) is None and st.record("raw") is None
    (tmp_path / "raw" / "_stage.json").write_text('{"settings": {}}')  # an older format, no result
    assert st.done("raw", {}) is None


def test_check_refuses_other_settings(tmp_path):
    st = Stages(tmp_path)
    st.check("work", {"n_grams": 5, "tasks": 2})  # first use: recorded
    st.check("work", {"n_grams": 5, "tasks": 2})  # same: fine
    with pytest.raises(SettingsMismatch, match=r"work.json: ran before with n_grams=5, now 7"):
        st.check("work", {"n_grams": 7, "tasks": 2})
    with pytest.raises(SettingsMismatch, match=r"ran before with extra=None, now 1"):
        st.check("work", {"n_grams": 5, "tasks": 2, "extra": 1})
