"""The README's `diffsteer generate` showcase runs as written, on the embedded model's diffusers folder."""

import json
import re
import shlex
from pathlib import Path

from PIL import Image

from diffsteer.cli import main
from diffsteer.worlds.shapes import IMAGE_SIZE, MODEL_PATH


ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_showcase_command_runs_as_written(tmp_path, monkeypatch, capsys):
    """Run the showcase from the repository's root (its --model is a path from there), writing to a temporary
    folder instead of out/; the lines it prints must be the ones the README shows."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- showcase-command -->\n```bash\n(.*?)\n```\n\n```\n(.*?)\n```", readme, re.DOTALL)
    argv = shlex.split(block.group(1).replace("\\\n", " "))
    assert argv[:2] == ["diffsteer", "generate"] and argv[-2:] == ["--out", "out/"], argv
    model = Path(argv[argv.index("--model") + 1])
    assert not model.is_absolute() and (ROOT / model).resolve() == MODEL_PATH.resolve()
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    assert main([*argv[1:-1], str(out)]) == 0
    captured = capsys.readouterr()
    shown_plan, shown_wrote = block.group(2).splitlines()
    assert captured.err.strip() == shown_plan
    assert captured.out.strip() == shown_wrote.replace("out/", f"{out}/")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward"] == "shapes-eval" and summary["reward_options"] == {"partial": True}
    assert summary["method"]["name"] == "fk" and summary["budget"]["num_particles"] == 4
    assert Image.open(out / "image.png").size == (IMAGE_SIZE, IMAGE_SIZE)
