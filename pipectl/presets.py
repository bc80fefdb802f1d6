"""The APES preset config: shipped in the wheel, or at the top of a checkout."""

from __future__ import annotations

import re
from pathlib import Path


def apes_preset_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "presets" / "apes.toml", here.parent / "config.example.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the APES preset is missing (looked beside {here})")


INCREMENTAL_BLOCK_START = (
    '# [[steps]]\n# name = "rule_effectiveness_summary"\n# kind = "incremental"'
)


def apes_incremental_steps_text(preset: str | None = None) -> str:
    """The preset's commented-out incremental versions of both APES summaries, uncommented:
    a config text of their two [[steps]] (gates and depends_on included)."""
    text = preset if preset is not None else apes_preset_path().read_text(encoding="utf-8")
    start = text.index(INCREMENTAL_BLOCK_START)
    block = text[start : text.index("# ----", start)]
    return re.sub(r"(?m)^# ?", "", block)
