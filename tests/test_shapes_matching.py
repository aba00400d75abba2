"""The `shapes-itm` reward's training data: true captions are true and hard negatives false, checked through the
evaluator's perception of the rendered scene (exact on rendered scenes), not through the `judge` the data uses."""

import numpy as np
import pytest

from diffsteer.worlds.shapes import CATEGORIES, all_captions, evaluate, held_out_prompts, parse, render, scene_for
from diffsteer.worlds.shapes.evaluator import judge, scene_objects
from diffsteer.worlds.shapes.matching import (
    EDITS,
    ROUNDED_EXPONENTS,
    degrade,
    edit,
    hard_negatives,
    matching_dataset,
    render_rounded,
)
from diffsteer.worlds.shapes.scenes import BACKGROUND, COLORS, Shape


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(11)
    drawn = []
    for category in CATEGORIES:
        captions = all_captions(category)
        for _ in range(15):
            caption = captions[rng.integers(len(captions))]
            drawn.append((caption, scene_for(parse(caption), rng)))
    return drawn


def test_hard_negatives_are_false_and_differ_from_the_caption(scenes):
    """90 scenes of every category, up to 3 negatives each: the evaluator reads every negative as false of the
    rendered scene and the scene's own caption as true."""
    rng = np.random.default_rng(0)
    counted = 0
    for caption, scene in scenes:
        image = render(scene)
        assert evaluate(image, caption).correct
        negatives = hard_negatives(parse(caption), scene_objects(scene), rng, set(), 3)
        assert negatives and caption not in negatives
        for negative in negatives:
            assert not evaluate(image, negative).correct, (caption, negative)
        counted += len(negatives)
    assert counted >= 2.5 * len(scenes)


def test_every_kind_of_edit_changes_what_a_caption_asks(scenes):
    """Each kind of edit yields, on some scene, requirements that are false of it (sizes need a sized caption and
    relations two different shapes, so not every scene takes every edit)."""
    rng = np.random.default_rng(1)
    false_by_kind = dict.fromkeys(EDITS, 0)
    for caption, scene in scenes:
        objects = scene_objects(scene)
        for kind in EDITS:
            false_by_kind[kind] += not judge(edit(parse(caption), objects, kind, rng), objects).correct
    assert all(count >= 5 for count in false_by_kind.values()), false_by_kind
    with pytest.raises(ValueError, match="Unknown edit"):
        edit(parse("a circle"), scene_objects(scenes[0][1]), "texture", rng)


@pytest.mark.parametrize("rounded", [False, True])
def test_degraded_scenes_still_show_their_caption(rounded):
    """Degradation (anti-aliasing, blur up to 1.2 pixels, noise, colour shift, corner tint; with `rounded`, rounded
    circles and squares too) keeps the truth: the evaluator, which reads soft images, accepts at least 95% of 120
    degraded scenes of every category (measured: 120 of 120, and 118 of 120 rounded; those misses are small circles
    near the boundary, where a pixel decides)."""
    rng = np.random.default_rng(3)
    accepted = 0
    for category in CATEGORIES:
        captions = all_captions(category)
        for _ in range(20):
            caption = captions[rng.integers(len(captions))]
            accepted += evaluate(degrade(scene_for(parse(caption), rng), rng, rounded), caption).correct
    assert accepted >= 0.95 * 120


def test_rounded_shapes_keep_their_area_and_kind():
    """`render_rounded` draws each kind with the area of its disc (the world's size convention) and, on large
    shapes where a pixel cannot hide the corners, the evaluator reads every exponent in its kind's range as that
    kind: the ranges lie on their own side of the circle/square boundary."""
    rng = np.random.default_rng(5)
    for kind in ("circle", "square", "triangle"):
        for _ in range(6):
            image = render_rounded((Shape(kind, "blue", 32.0, 32.0, 12.0),), rng)
            contrast = np.abs(np.array(COLORS["blue"]) - BACKGROUND).sum()
            covered = np.abs(image - np.array(BACKGROUND)).sum(-1) / contrast
            assert covered.sum() == pytest.approx(np.pi * 12.0**2, rel=0.01)
            assert evaluate(image.round().astype(np.uint8), f"a blue {kind}").correct, kind
    assert ROUNDED_EXPONENTS["circle"][1] < 2.3 < ROUNDED_EXPONENTS["square"][0]


def test_the_dataset_is_seeded_and_never_names_a_held_out_caption():
    held_out = {caption for captions in held_out_prompts().values() for caption in captions}
    first, second = matching_dataset(120, 0.3, seed=4), matching_dataset(120, 0.3, seed=4)
    assert [e.positives for e in first] == [e.positives for e in second]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, second, strict=True))
    named = {caption for e in first for caption in (*e.positives, *e.negatives)}
    assert not named & held_out
    assert all(e.negatives for e in first)
    assert sum(len(e.positives) > 1 for e in first) >= 20  # captions with colour or size words dropped
    rounded = matching_dataset(120, 0.3, seed=4, rounded_fraction=1.0)
    assert [e.positives for e in rounded] == [e.positives for e in matching_dataset(120, 0.3, 4, rounded_fraction=1)]
    assert sum(not np.array_equal(a.image, b.image) for a, b in zip(first, rounded, strict=True)) >= 40
