"""`gallery/build.py` renders `gallery/index.html` from the results the page embeds, with labels for people."""

import importlib.util
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def load_build():
    spec = importlib.util.spec_from_file_location("gallery_build", ROOT / "gallery" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gallery_page_renders_again_from_its_embedded_results():
    build = load_build()
    page = (ROOT / "gallery" / "index.html").read_text()
    results = build.read_results(ROOT / "gallery" / "index.html")
    assert build.render(results) == page  # --html-only reproduces the page exactly
    for row in results["rows"]:
        for cell in row["cells"]:
            assert (ROOT / "gallery" / cell["image"]).is_file()


def test_the_gallery_page_reads_as_sentences_and_words():
    page = (ROOT / "gallery" / "index.html").read_text()
    visible = page.split('<script type="application/json"')[0]
    assert "{" not in re.sub(r"<style>.*?</style>", "", visible, flags=re.DOTALL)  # no raw Python dict
    assert "_" not in re.sub(r'(src|alt)="[^"]*"', "", visible)  # no raw identifiers such as color_attr
    for label in ("single object", "two objects", "colours", "colour attribution", "best-of-8"):
        assert f">{label}<" in visible
    assert "Images by the embedded shapes model, 25 denoising steps with classifier-free guidance 3" in visible
    assert "each spend a budget of 8 plain samples, that is 8 particles" in visible
