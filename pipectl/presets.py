"""The APES preset config: shipped in the wheel, or at the top of a checkout."""

from __future__ import annotations

from pathlib import Path


def apes_preset_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "presets" / "apes.toml", here.parent / "config.example.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the APES preset is missing (looked beside {here})")
