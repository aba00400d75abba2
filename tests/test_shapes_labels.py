"""The by-eye label sets of generated shapes-world images (tests/fixtures/shapes_labels and its `second/`): complete,
split once, and consistent with the captions they judge."""

from collections import Counter
from pathlib import Path

import pytest

from diffsteer.worlds.shapes import CATEGORIES, COLORS, SHAPES, parse

from .fixtures.shapes_labels.labels import (
    HERE,
    SECOND,
    LabelledObject,
    load_image,
    load_labels,
    load_manifest,
    parse_object,
)
from .fixtures.shapes_labels.make_images import SEED


# The first set (the 2,000-step model's images, split into develop and measure) and the second (the shipped model's,
# drawn after the evaluator was developed: all measure).
SETS = {"first": HERE, "second": SECOND}
MINIMUM = {"first": 200, "second": 100}


def _load(name: str) -> tuple[Path, dict, dict]:
    folder = SETS[name]
    return folder, load_manifest(folder / "manifest.json"), load_labels(folder / "labels.txt")


@pytest.mark.parametrize("name", SETS)
def test_every_image_is_labelled_once_and_the_set_covers_the_world(name):
    folder, manifest, labels = _load(name)
    images = manifest["images"]
    assert len(images) >= MINIMUM[name]
    assert sorted(labels) == sorted(entry["id"] for entry in images)
    assert manifest["model_weights_sha1"]
    for category in CATEGORIES:
        rows = [entry for entry in images if entry["category"] == category]
        assert {entry["split"] for entry in rows} == {"held-out", "training"}, category
        assert {entry["method"] for entry in rows} == {"plain", "bon@4", "fk@4"}, category
        parts = Counter(entry["part"] for entry in rows)
        if name == "first":
            assert abs(parts["develop"] - parts["measure"]) <= 1, (category, parts)
        else:
            assert set(parts) == {"measure"}, (category, parts)
    for entry in images:
        assert (folder / entry["file"]).exists(), entry["file"]
        assert parse(entry["prompt"])  # every caption is one of the grammar
    assert load_image(images[0], folder).shape == (64, 64, 3)


def test_the_second_set_is_of_another_model_and_other_draws():
    _, first, _ = _load("first")
    _, second, _ = _load("second")
    assert second["model_weights_sha1"] != first["model_weights_sha1"]
    assert second["plan_seed"] != first.get("plan_seed", SEED)  # the first set predates the recorded plan seed


@pytest.mark.parametrize("name", SETS)
def test_labels_name_only_the_worlds_shapes_and_colours(name):
    _, _, labels = _load(name)
    for label in labels.values():
        for obj in label.objects:
            assert obj.shape in (*SHAPES, None), (label.id, obj)
            assert obj.color in (*COLORS, None), (label.id, obj)
    clear = [label for label in labels.values() if label.satisfies is not None]
    assert len(clear) >= MINIMUM[name]


def _could_satisfy(objects: tuple[LabelledObject, ...], caption: str) -> bool:
    """Whether the labelled objects are exactly the caption's shapes with its colours and sizes (the relation is
    not labelled, so it is not checked)."""
    required = list(parse(caption).objects)
    if len(objects) != len(required):
        return False
    remaining = list(objects)
    for want in required:
        match = next(
            (
                got
                for got in remaining
                if got.shape == want.shape
                and (want.color is None or got.color == want.color)
                and (want.size is None or got.size == want.size)
            ),
            None,
        )
        if match is None:
            return False
        remaining.remove(match)
    return True


@pytest.mark.parametrize("name", SETS)
def test_verdicts_agree_with_what_the_labels_say_is_there(name):
    """A `y` needs exactly the caption's shapes, colours and sizes; an `n` with exactly those (and no relation to
    fail) would contradict itself. Catches slips in a hand-written label file."""
    _, manifest, labels = _load(name)
    prompts = {entry["id"]: entry["prompt"] for entry in manifest["images"]}
    for label in labels.values():
        caption = prompts[label.id]
        required = parse(caption)
        shapes_known = all(obj.shape for obj in label.objects)
        colours_matter = any(obj.color for obj in required.objects)
        known = shapes_known and (not colours_matter or all(obj.color for obj in label.objects))
        if label.satisfies is True:
            assert shapes_known and _could_satisfy(label.objects, caption), (label.id, caption, label.objects)
        if label.satisfies is False and known and required.relation is None:
            assert not _could_satisfy(label.objects, caption), (label.id, caption, label.objects)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("red square", LabelledObject("square", "red")),
        ("large ? square", LabelledObject("square", None, "large")),
        ("purple ?", LabelledObject(None, "purple")),
    ],
)
def test_labelled_objects_parse(text, expected):
    assert parse_object(text) == expected


def test_a_malformed_object_is_refused():
    with pytest.raises(ValueError, match="colour shape"):
        parse_object("square")
