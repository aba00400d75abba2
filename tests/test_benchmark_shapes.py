"""`benchmarks/shapes.py`'s bookkeeping: which columns it compares, and runs split across processes merged back."""

import random
import sys
from pathlib import Path

import pytest


# The benchmarks import each other by file name; their folder is on the path only for this import (it holds a
# `rewards.py` that must not shadow anything later).
BENCHMARKS = str(Path(__file__).parents[1] / "benchmarks")
sys.path.insert(0, BENCHMARKS)
try:
    from shapes import comparisons, from_json, paired_difference, standard_columns, to_json
finally:
    sys.path.remove(BENCHMARKS)


def test_comparisons_pair_every_steered_column_with_plain_and_best_of_n_at_its_budget():
    names = ["plain", "bon@4", "fk@4", "zero-order@4", "bon@8", "fk@8", "paths@8"]
    assert comparisons(names) == [
        ("fk@4", "plain"),
        ("fk@4", "bon@4"),
        ("zero-order@4", "plain"),
        ("zero-order@4", "bon@4"),
        ("fk@8", "plain"),
        ("fk@8", "bon@8"),
        ("paths@8", "plain"),
        ("paths@8", "bon@8"),
    ]
    assert comparisons(["plain", "fk@4"]) == [("fk@4", "plain")]


def test_a_budget_a_method_refuses_is_left_out():
    names = [c.name for c in standard_columns([4, 8], ("bon", "paths"), steps=25)]
    assert names == ["plain", "bon@4", "bon@8", "paths@8"]  # paths needs about 7 plain samples on 25 steps


def _results(prompts, columns, seeds, first_seed, draw):
    """Made-up results in `run`'s order: prompt by prompt, seed by seed."""
    return {
        (category, column): [
            (draw.random() < 0.5, draw.random())
            for _ in category_prompts
            for _ in range(first_seed, first_seed + seeds)
        ]
        for category, category_prompts in prompts.items()
        for column in columns
    }


def test_runs_split_by_seed_merge_into_the_whole_run():
    prompts = {"counting": ["two squares", "four circles"], "position": ["a circle above a square"]}
    columns = ["plain", "bon@4", "fk@4"]
    whole = _results(prompts, columns, 4, 0, random.Random(0))
    halves = [{key: [] for key in whole}, {key: [] for key in whole}]
    for key, runs in whole.items():
        for i, run in enumerate(runs):
            halves[i % 4 >= 2][key].append(run)
    rows = to_json(halves[1], prompts, 2, 2) + to_json(halves[0], prompts, 2, 0)
    merged, names = from_json(rows)
    assert names == columns
    by_run = {
        key: dict(zip([(p, s) for p in prompts[key[0]] for s in range(4)], runs, strict=True))
        for key, runs in whole.items()
    }
    for key, runs in merged.items():
        assert runs == [by_run[key][run] for run in sorted(by_run[key])]


def test_a_column_missing_a_run_is_refused():
    prompts = {"counting": ["two squares"]}
    rows = to_json(_results(prompts, ["plain", "fk@4"], 2, 0, random.Random(1)), prompts, 2, 0)
    with pytest.raises(ValueError, match="fk@4 lacks 1 run"):
        from_json([row for row in rows if not (row["column"] == "fk@4" and row["seed"] == 1)])


def test_paired_difference_by_hand():
    mean, error = paired_difference([True, True, False, True], [False, True, False, False])
    # differences 1, 0, 0, 1: mean 0.5, sample sd sqrt(1/3), error sqrt(1/3) / 2
    assert mean == pytest.approx(50.0)
    assert error == pytest.approx(100 * (1 / 3) ** 0.5 / 2)
