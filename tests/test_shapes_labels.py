"""The by-eye label set of generated shapes-world images (tests/fixtures/shapes_labels): complete, split once, and
consistent with the captions it judges."""

from collections import Counter

import pytest

from diffsteer.worlds.shapes import CATEGORIES, COLORS, SHAPES, parse

from .fixtures.shapes_labels.labels import HERE, LabelledObject, load_image, load_labels, load_manifest, parse_object


MANIFEST = load_manifest()
LABELS = load_labels()


def test_every_image_is_labelled_once_and_the_set_covers_the_world():
    images = MANIFEST["images"]
    assert len(images) >= 200
    assert sorted(LABELS) == sorted(entry["id"] for entry in images)
    assert MANIFEST["model_weights_sha1"]
    for category in CATEGORIES:
        rows = [entry for entry in images if entry["category"] == category]
        assert {entry["split"] for entry in rows} == {"held-out", "training"}, category
        assert {entry["method"] for entry in rows} == {"plain", "bon@4", "fk@4"}, category
        parts = Counter(entry["part"] for entry in rows)
        assert abs(parts["develop"] - parts["measure"]) <= 1, (category, parts)
    for entry in images:
        assert (HERE / entry["file"]).exists(), entry["file"]
        assert parse(entry["prompt"])  # every caption is one of the grammar
    assert load_image(images[0]).shape == (64, 64, 3)


def test_labels_name_only_the_worlds_shapes_and_colours():
    for label in LABELS.values():
        for obj in label.objects:
            assert obj.shape in (*SHAPES, None), (label.id, obj)
            assert obj.color in (*COLORS, None), (label.id, obj)
    clear = [label for label in LABELS.values() if label.satisfies is not None]
    assert len(clear) >= 200


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


def test_verdicts_agree_with_what_the_labels_say_is_there():
    """A `y` needs exactly the caption's shapes, colours and sizes; an `n` with exactly those (and no relation to
    fail) would contradict itself. Catches slips in a hand-written label file."""
    prompts = {entry["id"]: entry["prompt"] for entry in MANIFEST["images"]}
    for label in LABELS.values():
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
