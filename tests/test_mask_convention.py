"""0/255 masks (as FSS-1000 and folder datasets store them on disk) passed straight to the ops.

255 means "ignore" in this library, so a 0/255 binary image is an all-ignore mask: the map
is all zeros and the prototype zero. Every public op and module that takes a mask warns
(one shared check, ``fewshot_priors.ops.checks.warn_ignore_only``), naming the argument
and the convention, unless the value checks are off.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fewshot_priors as fp
from fewshot_priors.ops import GuidedRegionMap, guided_region_map, masked_average_pool


def _feats(b=2, c=8, hw=6):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, c, hw, hw, generator=g)


def _mask_0_255(b=2, hw=12):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(b, 1, hw, hw, generator=g) > 0.5).to(torch.uint8) * 255


CALLS = {
    "masked_average_pool": (lambda f, m: masked_average_pool(f, m), "mask"),
    "guided_region_map": (lambda f, m: guided_region_map(f, f, m), "support_mask"),
    "GuidedRegionMap": (lambda f, m: GuidedRegionMap()(f, f, m), "support_mask"),
    "guided_region_map K-shot": (lambda f, m: guided_region_map(f, f[:, None].expand(-1, 2, -1, -1, -1),
                                                                m.expand(-1, 2, -1, -1)), "support_mask"),
}


@pytest.mark.parametrize("op", list(CALLS))
def test_a_0_255_mask_warns_naming_the_argument_and_the_convention(op):
    call, name = CALLS[op]
    f, m = _feats(), _mask_0_255()
    with pytest.warns(UserWarning, match=rf"`{name}`.*no foreground.*255.*'ignore'.*0/255.*mask / 255") as rec:
        out = call(f, m)
    assert len(rec) == 1
    assert rec[0].filename == __file__  # points at the caller, not into the library
    assert (out == 0).all()  # the silent result the warning is about
    # the fix the warning suggests gives a real result, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (call(f, m / 255) != 0).any()
        call(f, m > 127)


@pytest.mark.parametrize("op", list(CALLS))
def test_real_masks_with_an_ignore_border_do_not_warn(op):
    call, _ = CALLS[op]
    m = (_mask_0_255() // 255).clone()
    m[..., 0, :] = 255  # foreground plus an ignored border: a real PASCAL-style label
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call(_feats(), m)
        call(_feats(), torch.zeros_like(m))  # all background, no 255: a legitimately empty mask
        call(_feats(), m.bool())


@pytest.mark.parametrize("op", list(CALLS))
def test_the_global_check_switch_turns_the_warning_off(op):
    call, _ = CALLS[op]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fp.checks_disabled():
            call(_feats(), _mask_0_255())
        fp.set_checks(False)
        try:
            call(_feats(), _mask_0_255())
        finally:
            fp.set_checks(True)


def test_qgnet_warns_once_per_call_from_the_shared_check():
    from fewshot_priors.models.checks import warn_ignore_only_masks

    m = torch.zeros(2, 3, 5, 5)
    m[1, 2] = 255
    m[0, 1, 0, 0] = 1
    m[0, 1, 1, 1] = 255
    with pytest.warns(UserWarning, match=r"`support_masks`: items \[\(1, 2\)\] have no foreground") as rec:
        warn_ignore_only_masks(m)
    assert len(rec) == 1


@settings(max_examples=40, deadline=None, derandomize=True)
@given(values=st.lists(st.sampled_from([0, 1, 255, 0.5]), min_size=2 * 9, max_size=2 * 9))
def test_warns_exactly_when_an_item_has_255_and_no_foreground(values):
    m = torch.tensor(values, dtype=torch.float32).reshape(2, 1, 3, 3)
    flat = m.flatten(1)
    expect = [i for i in range(2) if (flat[i] == 255).any() and not ((flat[i] > 0) & (flat[i] != 255)).any()]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        masked_average_pool(_feats(hw=3), m)
    msgs = [str(w.message) for w in rec if "no foreground" in str(w.message)]
    if expect:
        assert len(msgs) == 1 and str([(i, 0) for i in expect]) in msgs[0]
    else:
        assert not msgs
