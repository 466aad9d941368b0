"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    assert len(commands) >= 2, "README must show the main-job and the test commands"
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_cmd in ci, ".ci/run must run the README's test command verbatim"


def test_main_job_embeds_the_shipped_sample():
    main_cmd = next(c for c in _readme_commands() if "llm2vec-fast embed" in c)
    sample = re.search(r"embed (\S+)", main_cmd).group(1)
    assert (ROOT / sample).is_file()
