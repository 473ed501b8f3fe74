"""The documentation users read stays true to the code."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_up_to_date():
    from facestudio.cli.reference import reference

    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current.strip() == reference().strip(), \
        "docs/cli.md is stale: run `python -m facestudio.cli.reference > docs/cli.md`"


def test_readme_starts_with_the_two_fresh_machine_commands():
    lines = [l for l in (ROOT / "README.md").read_text(encoding="utf-8").splitlines() if l.strip()]
    assert lines[1:5] == ["```bash", "bash packaging/setup-env && .venv/bin/facestudio --virtual-device",
                          "bash packaging/setup-env --tests && .venv/bin/python -m pytest", "```"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash packaging/setup-env --tests && .venv/bin/python -m pytest" in ci


def test_docs_link_targets_exist():
    import re

    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
