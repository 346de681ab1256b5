"""num_workers="auto" follows the machine's cores (capped); bad values fail early with the option's name."""

from __future__ import annotations

import pytest

from fewshot_priors.data import workers as workers_module
from fewshot_priors.data.workers import MAX_AUTO_WORKERS, available_cores, resolve_num_workers


def test_auto_follows_cores(monkeypatch):
    assert resolve_num_workers("auto") == min(available_cores(), MAX_AUTO_WORKERS)
    for cores, expected in [(1, 1), (2, 2), (16, MAX_AUTO_WORKERS)]:
        monkeypatch.setattr(workers_module, "available_cores", lambda c=cores: c)
        assert resolve_num_workers("auto") == expected
        assert resolve_num_workers(None) == expected
        assert resolve_num_workers(" AUTO ") == expected


def test_explicit_values_pass_through():
    assert resolve_num_workers(0) == 0
    assert resolve_num_workers(3) == 3
    assert resolve_num_workers("5") == 5  # from --set num_workers=5


@pytest.mark.parametrize("bad, error", [(-1, ValueError), ("many", ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_values_name_the_option(bad, error):
    with pytest.raises(error, match="num_workers"):
        resolve_num_workers(bad)


def test_pretrain_defaults_to_auto_and_checks_early():
    from fewshot_priors.config import DEFAULTS
    from fewshot_priors.engine.pretrain import _config

    assert DEFAULTS["pretrain"]["num_workers"] == "auto"
    assert _config({"pretrain": {"images": "unused"}})["pretrain"]["num_workers"] == "auto"
    with pytest.raises(ValueError, match="num_workers"):
        _config({"pretrain": {"images": "unused", "num_workers": -2}})
