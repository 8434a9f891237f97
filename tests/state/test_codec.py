"""Prefix ranges: the bound both backends use to answer `list(kind, prefix)` from an index."""

from __future__ import annotations

import pytest

from sluice.state.codec import prefix_upper_bound

TOP = "\U0010ffff"


@pytest.mark.parametrize(
    ("prefix", "bound"),
    [
        ("", None),
        ("a", "b"),
        ("a/", "a0"),
        ("ab", "ac"),
        ("\ud7ff", "\ue000"),  # surrogates are skipped: they cannot be stored
        (f"x{TOP}", "y"),
        (f"x{TOP}{TOP}", "y"),
        (TOP, None),
    ],
)
def test_prefix_upper_bound(prefix: str, bound: str | None) -> None:
    assert prefix_upper_bound(prefix) == bound


@pytest.mark.parametrize("prefix", ["a", "a/", "\ud7ff", f"x{TOP}", "日"])
def test_every_extension_of_the_prefix_is_below_the_bound(prefix: str) -> None:
    bound = prefix_upper_bound(prefix)
    assert bound is not None
    for suffix in ["", "\x01", "z", "\uffff", TOP, TOP * 3]:
        assert prefix <= prefix + suffix < bound
    assert not bound.startswith(prefix)
