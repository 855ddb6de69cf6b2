"""modelfs.formats.relpath: whatever a registry sends, a cleaned path stays inside the model."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfs.errors import ManifestInvalid
from modelfs.formats.relpath import clean_path

segments = st.sampled_from(["..", ".", "", "a", "b.json", "..a", "a..", "..."])
paths = st.lists(segments, min_size=1, max_size=8).map("/".join)


@given(paths)
def test_a_cleaned_path_is_relative_without_dot_segments_and_stays_inside(path):
    try:
        cleaned = clean_path(path, "layer 0")
    except ManifestInvalid:
        return
    parts = cleaned.split("/")
    assert not cleaned.startswith("/")
    assert all(p not in ("", ".", "..") for p in parts)
    # Joined under a root it never leaves the root.
    assert posixpath.normpath("/root/" + cleaned).startswith("/root/")
    assert clean_path(cleaned, "again") == cleaned


@given(paths)
def test_only_leading_dot_dots_are_forgiven(path):
    """A path whose '..' segments are all leading is cleaned; one that climbs out of a
    directory it entered is refused."""
    segs = [s for s in path.split("/")]
    depth, climbs_out, leading = 0, False, True
    for s in segs:
        if s in ("..", ".") and leading:
            continue
        leading = False
        if s == "..":
            depth -= 1
            climbs_out |= depth < 0
        elif s not in ("", "."):
            depth += 1
    if path.startswith("/"):
        return
    if climbs_out:
        with pytest.raises(ManifestInvalid):
            clean_path(path, "l")


@pytest.mark.parametrize("bad", ["", "/a", "a\0b", "x/" * 70 + "y", "n" * 256])
def test_unusable_paths_are_refused(bad):
    with pytest.raises(ManifestInvalid):
        clean_path(bad, "layer 1")
