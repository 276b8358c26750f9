"""The step timeline returns exactly the gaps of any tick range."""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sim.itl import ItlEncoder
from sim.timeline import Timeline

entry = st.tuples(st.floats(0.001, 1.0), st.sampled_from([0.0, 1e-3, 0.05]), st.integers(1, 7))


@given(entries=st.lists(entry, min_size=1, max_size=15), data=st.data())
def test_copy_gaps_returns_the_gaps_of_the_range(entries, data):
    tl = Timeline()
    gaps = []
    for first, delta, count in entries:
        tl.append(first, delta, count)
        gaps += [first + delta * i for i in range(count)] if count > 1 else [first]
    after = data.draw(st.integers(0, tl.ticks - 1))
    upto = data.draw(st.integers(after, tl.ticks))
    enc = ItlEncoder()
    enc.add(0.5)  # gaps already recorded stay in front
    tl.copy_gaps(after, upto, enc)
    assert np.allclose(enc.gaps(), [0.5] + gaps[after:upto])


@given(entries=st.lists(entry, min_size=2, max_size=15), data=st.data())
def test_trim_keeps_every_range_after_the_cut(entries, data):
    full, cut = Timeline(), Timeline()
    for first, delta, count in entries:
        full.append(first, delta, count)
        cut.append(first, delta, count)
    keep_from = data.draw(st.integers(0, full.ticks - 1))
    cut.trim(keep_from)
    assert len(cut) <= len(full)
    after = data.draw(st.integers(keep_from, full.ticks - 1))
    upto = data.draw(st.integers(after, full.ticks))
    a, b = ItlEncoder(), ItlEncoder()
    full.copy_gaps(after, upto, a)
    cut.copy_gaps(after, upto, b)
    assert np.allclose(a.gaps(), b.gaps())
