"""Evaluation protocols by name: how many test episodes, drawn with which seeds.

Numbers in the few-shot segmentation literature are measured under different protocols,
and they differ by more than many of the gains reported. The three in use:

==============  ======================================  ====================  ==============
name            used by                                 episodes              seeds
==============  ======================================  ====================  ==============
``pfenet``      PFENet, QGNet (this library's default)   5000 PASCAL-5i,       321
                                                         20000 COCO-20i
``hsnet``       HSNet and its followers                  1000                  0
``multi-seed``  BAM, HDMNet (mean and std over seeds)    1000 per seed         321 ... 325
==============  ======================================  ====================  ==============

:func:`evaluate_protocol` runs one; :func:`protocol_name` names the protocol an evaluation
matches (``"custom"`` when none), so that every result records it
(:func:`~fewshot_priors.engine.evaluate.evaluate` adds it as ``"protocol"``).
"""

from __future__ import annotations

import difflib
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PROTOCOLS", "EvalProtocol", "evaluate_protocol", "get_protocol", "protocol_name"]


@dataclass(frozen=True)
class EvalProtocol:
    """A named evaluation protocol.

    Args:
        name: its name (``--protocol NAME``).
        episodes: test episodes per seed: one number, or one per dataset name (``data.dataset``).
        seeds: the episode seeds; with more than one, the results are the mean (and std) over them.
        summary: one line for the help and the docs.
    """

    name: str
    episodes: int | Mapping[str, int]
    seeds: tuple[int, ...]
    summary: str

    def episodes_for(self, dataset: str | None) -> int:
        """Episodes per seed on ``dataset`` (a ``data.dataset`` name).

        Raises:
            ValueError: the protocol is defined for other datasets only.
        """
        if isinstance(self.episodes, int):
            return self.episodes
        if dataset not in self.episodes:
            raise ValueError(f"the {self.name} protocol is defined for data.dataset "
                             f"{' / '.join(self.episodes)}, not {dataset!r}; use --episodes / --seed")
        return self.episodes[dataset]


#: The protocols, by name.
PROTOCOLS: dict[str, EvalProtocol] = {
    p.name: p
    for p in (
        EvalProtocol("pfenet", {"pascal": 5000, "coco": 20000}, (321,),
                     "PFENet / QGNet: 5000 episodes on PASCAL-5i, 20000 on COCO-20i, seed 321"),
        EvalProtocol("hsnet", 1000, (0,), "HSNet: 1000 episodes, seed 0"),
        EvalProtocol("multi-seed", 1000, (321, 322, 323, 324, 325),
                     "BAM / HDMNet: 1000 episodes for each of 5 seeds, mean and std over the seeds"),
    )
}


def get_protocol(name: str) -> EvalProtocol:
    """The protocol called ``name``.

    Example:
        >>> get_protocol("hsnet").seeds
        (0,)

    Raises:
        ValueError: an unknown name (the closest one suggested).
    """
    if name not in PROTOCOLS:
        close = difflib.get_close_matches(str(name), PROTOCOLS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown evaluation protocol {name!r}; protocols: {', '.join(PROTOCOLS)}.{hint}")
    return PROTOCOLS[name]


def protocol_name(dataset: str | None, episodes: int, seeds: Sequence[int]) -> str:
    """The name of the protocol that ``episodes`` per seed with ``seeds`` on ``dataset`` is, else ``"custom"``.

    Example:
        >>> protocol_name("pascal", 5000, [321]), protocol_name("coco", 1000, [0]), protocol_name("pascal", 50, [1])
        ('pfenet', 'hsnet', 'custom')
    """
    for p in PROTOCOLS.values():
        per_dataset = p.episodes if isinstance(p.episodes, int) else p.episodes.get(str(dataset))
        if per_dataset == episodes and tuple(seeds) == p.seeds:
            return p.name
    return "custom"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return float(statistics.fmean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


def evaluate_protocol(protocol: str | EvalProtocol, dataset_name: str | None,
                      run: Callable[[int, int], Mapping[str, Any]]) -> dict[str, Any]:
    """Run ``protocol``: ``run(episodes, seed)`` (one evaluation, e.g. ``evaluate`` on the
    episodes of that seed) for each of its seeds.

    Returns:
        One seed: that evaluation's result. Several: ``miou``, ``fbiou`` and ``per_class_iou``
        as the mean over the seeds, ``miou_std`` / ``fbiou_std`` (sample standard deviation),
        ``episodes`` (per seed), ``seeds`` and ``runs`` (each seed's result). Both record
        ``protocol`` (the name).
    """
    p = get_protocol(protocol) if isinstance(protocol, str) else protocol
    episodes = p.episodes_for(dataset_name)
    runs = [dict(run(episodes, seed)) for seed in p.seeds]
    if len(runs) == 1:
        return {**runs[0], "protocol": p.name}
    miou, miou_std = _mean_std([r["miou"] for r in runs])
    fbiou, fbiou_std = _mean_std([r["fbiou"] for r in runs])
    classes = runs[0].get("per_class_iou", {})
    per_class = {c: statistics.fmean(r["per_class_iou"][c] for r in runs) for c in classes}
    return {"miou": miou, "miou_std": miou_std, "fbiou": fbiou, "fbiou_std": fbiou_std, "per_class_iou": per_class,
            "episodes": episodes, "seeds": list(p.seeds), "protocol": p.name, "runs": runs}
