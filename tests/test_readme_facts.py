"""Facts the README states that the code decides: checked here so that they cannot drift."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from export.data.speech import DIGIT_WORDS, PHRASES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def paragraph(starting: str) -> str:
    start = README.index(starting)
    return " ".join(README[start : README.index("\n\n", start)].split())


def test_the_speech_vocabulary_listed_is_the_one_trained() -> None:
    text = paragraph("**What speech-ctc understands**")
    assert re.findall(r'"([^"]+)"', text) == PHRASES
    assert f"these {len(PHRASES)} commands" in text
    digits = re.search(r"digit words \(([^)]*)\)", text)
    assert digits and digits.group(1).split(", ") == DIGIT_WORDS


def test_make_help_lists_every_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):(?!=)", makefile, re.MULTILINE))
    shown = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, check=True
    ).stdout
    listed = {line.split()[0] for line in shown.splitlines() if line.strip()}
    assert targets, "no targets found in the Makefile"
    assert targets <= listed, f"make help leaves out: {sorted(targets - listed)}"
