"""The one "run once per settings" marker: a finished stage leaves a JSON record of what it ran with.

    stages = Stages(run_dir / "stages")             # marker of stage "x": run_dir/stages/x.json
    rec = stages.done("x", settings)                # {"settings", "result", "seconds"} or None
    if rec is None:
        stages.mark("x", settings, do_x(), seconds)

A stage whose marker holds the same settings is done and its recorded result is reused; a marker with other
settings means "redo it" to most callers (speedrun, data pipeline, eval cache) and "refuse" to those whose
leftovers would silently mix with new work (`check`, for dedup's work dir). Settings are compared as JSON,
so a tuple and a list, or a Path and its string, are the same setting.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .io import write_json


class SettingsMismatch(ValueError):
    """A stage's marker holds other settings than the ones asked for; the message names both."""


def jsonable(obj):
    """`obj` as it reads back from JSON (the form in which settings are stored and compared)."""
    return json.loads(json.dumps(obj, default=str))


def read_marker(path: str | Path) -> dict | None:
    """The record in a marker file; None when there is none (or it is not a marker: then the stage reruns)."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and "settings" in rec and "result" in rec else None


class Stages:
    """Markers of named stages. `where`: a folder (marker = <folder>/<name>.json) or name -> marker path."""

    def __init__(self, where: str | Path | Callable[[str], Path]):
        self._where = where

    def path(self, name: str) -> Path:
        if callable(self._where):
            return Path(self._where(name))
        return Path(self._where) / f"{name}.json"

    def record(self, name: str) -> dict | None:
        """The marker's record whatever its settings; None when there is none."""
        return read_marker(self.path(name))

    def done(self, name: str, settings: dict) -> dict | None:
        """The record of stage `name` if it finished with these settings, else None."""
        rec = self.record(name)
        return rec if rec is not None and rec["settings"] == jsonable(settings) else None

    def mark(self, name: str, settings: dict, result, seconds: float | None = None) -> None:
        """Record that stage `name` finished with `settings` (atomically: a kill leaves no half marker)."""
        rec = {"settings": jsonable(settings), "result": result}
        if seconds is not None:
            rec["seconds"] = round(seconds, 2)
        write_json(self.path(name), rec, indent=1)

    def check(self, name: str, settings: dict) -> None:
        """Mark `name` as started with `settings`, or raise SettingsMismatch if it ran with others."""
        rec = self.record(name)
        if rec is None:
            self.mark(name, settings, None)
            return
        new, old = jsonable(settings), rec["settings"]
        if old != new:
            key = next(k for k in {**old, **new} if old.get(k) != new.get(k))
            raise SettingsMismatch(
                f"{self.path(name)}: ran before with {key}={old.get(key)!r}, now {new.get(key)!r}"
            )
