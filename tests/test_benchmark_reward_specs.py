"""`benchmarks/shapes_intermediate.py --rewards`: a registered name, or `LABEL=NAME:JSON` for unshipped weights."""

import sys
from pathlib import Path

import pytest


# The benchmarks import each other by file name; their folder is on the path only for this import (it holds a
# `rewards.py` that must not shadow anything later).
BENCHMARKS = str(Path(__file__).parents[1] / "benchmarks")
sys.path.insert(0, BENCHMARKS)
try:
    from shapes_intermediate import reward_spec
finally:
    sys.path.remove(BENCHMARKS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("shapes-clip", ("shapes-clip", "shapes-clip", {})),
        ('v2=shapes-negclip:{"pretrained": "/a=b/c"}', ("v2", "shapes-negclip", {"pretrained": "/a=b/c"})),
        (
            'shapes-negclip:{"pretrained": "/x"}',
            ('shapes-negclip:{"pretrained": "/x"}', "shapes-negclip", {"pretrained": "/x"}),
        ),
    ],
)
def test_reward_specs_parse(text, expected):
    assert reward_spec(text) == expected


def test_options_that_are_not_an_object_are_refused():
    with pytest.raises(ValueError, match="JSON object"):
        reward_spec("shapes-clip:[1]")
