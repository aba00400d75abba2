"""Layout promises: the subpackage mapping, the diffusers-free core, and a README example that runs."""

import re
import subprocess
import sys
from pathlib import Path

import diffsteer.pipelines
import diffsteer.rewards


ROOT = Path(__file__).resolve().parents[1]


def test_top_level_folders_install_as_diffsteer_subpackages():
    assert Path(diffsteer.pipelines.__file__).parent == ROOT / "pipelines"
    assert Path(diffsteer.rewards.__file__).parent == ROOT / "rewards"


def test_nothing_imports_a_bare_pipelines_or_rewards():
    bare = re.compile(r"^\s*(from|import)\s+(pipelines|rewards)\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.py")
        if ".venv" not in path.parts and bare.search(path.read_text())
    ]
    assert offenders == []


def test_smc_core_imports_no_diffusers():
    code = (
        "import sys, diffsteer.smc; assert not {'diffusers', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_readme_core_api_example_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    example = next(block for block in blocks if "four_modes()" in block)  # the runnable, download-free one
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    result, tilted = namespace["result"], namespace["tilted"]
    assert result.samples.shape == (1000, 2)
    estimate = tilted.mode_weights(result.samples, result.log_weights)
    # One run of 1,000 particles; a mode weight's replicate std is at most 0.035 there (README table): 3 std.
    assert (estimate - tilted.weights).abs().max() < 0.1
