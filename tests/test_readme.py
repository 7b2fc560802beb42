"""The README's "Using the MoE layer in your own code" example must run as printed."""

import re

from conftest import REPO_ROOT


def test_readme_moe_layer_example_runs():
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Using the MoE layer in your own code", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


def test_readme_names_the_two_commands():
    text = (REPO_ROOT / "README.md").read_text()
    assert "make train" in text and "make test" in text
