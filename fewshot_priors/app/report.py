"""What the demo and the real-images study report: predictors with baselines, the Table-7 recall
meter, Fig. 5 rows and the markdown tables (shared by :mod:`fewshot_priors.app.demo` and
:mod:`fewshot_priors.app.real_images`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX

__all__ = ["MapAUC", "MapRecall", "SupportCheckTally", "ablation_markdown", "episode_rows", "figure_episodes",
           "gains_markdown", "paired_gains", "pct", "predictors", "results_markdown", "spread", "summarize"]


def upsample_map(m: torch.Tensor, size) -> torch.Tensor:
    """``B, 1, h, w`` region map -> ``B, H, W`` at ``size`` (bilinear, align_corners)."""
    return F.interpolate(m.float(), size=tuple(size), mode="bilinear", align_corners=True)[:, 0]


class MapRecall:
    """Table-7 recall of the guided and prior region maps over the evaluated episodes.

    ``prior_map (1-p)`` is the object region ``{1 - p >= alpha}`` (the prior map is
    low on objects, Sec. 4.3); ``prior_map (p)`` is the literal ``{p >= alpha}``.
    """

    def __init__(self) -> None:
        from fewshot_priors.analysis import RecallMeter

        self.meters = {"guided_map": RecallMeter(),
                       "prior_map (1-p)": RecallMeter(low_is_object=True),
                       "prior_map (p)": RecallMeter(low_is_object=False)}

    def update(self, out: Mapping[str, Any], query_mask: torch.Tensor) -> None:
        label = query_mask.cpu()
        self.meters["guided_map"].update(out["guided_map"].float().cpu(), label)
        if out.get("prior_map") is not None:
            for name in ("prior_map (1-p)", "prior_map (p)"):
                self.meters[name].update(out["prior_map"].float().cpu(), label)

    def compute(self) -> dict[str, Any]:
        return {k: m.compute() for k, m in self.meters.items() if m.compute()["episodes"] > 0}


class MapAUC:
    """Threshold-free scores of the region maps: per-episode pixel ROC AUC and average precision
    of the guided and prior maps against the query's ground truth (the maps upsampled bilinearly to
    the label size; 255 pixels excluded), averaged over the episodes where they are defined.

    AUC 0.5 = the map carries no information about the object; the prior map is low on objects
    (Sec. 4.3), so its AUC is reported for ``1 - p`` (= 1 - AUC of ``p``). AP's chance level is the
    foreground share (also reported). A user sees whether the frozen features carry the object
    before any decoder is trained.
    """

    MAPS = ("guided_map", "prior_map (1-p)")

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = {m: {"auc": [], "ap": []} for m in self.MAPS}
        self.fg_share: list[float] = []

    def update(self, out: Mapping[str, Any], query_mask: torch.Tensor) -> None:
        from fewshot_priors.metrics import pixel_average_precision, pixel_roc_auc

        label = query_mask.cpu()
        maps = {"guided_map": upsample_map(out["guided_map"], label.shape[-2:]).cpu()}
        if out.get("prior_map") is not None:
            maps["prior_map (1-p)"] = 1 - upsample_map(out["prior_map"], label.shape[-2:]).cpu()
        for i in range(label.shape[0]):
            valid = label[i] != IGNORE_INDEX
            if bool(valid.any()):
                self.fg_share.append(float((label[i][valid] == 1).double().mean()))
            for name, m in maps.items():
                self.values[name]["auc"].append(pixel_roc_auc(m[i], label[i]))
                self.values[name]["ap"].append(pixel_average_precision(m[i], label[i]))

    def compute(self) -> dict[str, Any]:
        """``{map: {"auc": mean, "ap": mean, "episodes": n}, "foreground_share": mean}``."""
        out: dict[str, Any] = {}
        for name, d in self.values.items():
            auc = [v for v in d["auc"] if math.isfinite(v)]
            ap = [v for v in d["ap"] if math.isfinite(v)]
            if auc:
                out[name] = {"auc": statistics.fmean(auc), "ap": statistics.fmean(ap) if ap else float("nan"),
                             "episodes": len(auc)}
        if self.fg_share:
            out["foreground_share"] = statistics.fmean(self.fg_share)
        return out


class SupportCheckTally:
    """What the support check (:class:`~fewshot_priors.engine.support_check.SupportCheck`) did over
    the evaluated episodes: how many it checked (K >= 2), in how many the guided map answered, and
    the mean support IoU of the model and of the map."""

    def __init__(self) -> None:
        self.model_iou: list[float] = []
        self.map_iou: list[float] = []
        self.map_answers = 0

    def update(self, out: Mapping[str, Any]) -> None:
        check = out.get("support_check")
        if check is None:  # a 1-shot batch: not checked
            return
        self.model_iou.extend(check["model"].tolist())
        self.map_iou.extend(check["guided_map"].tolist())
        self.map_answers += int(check["use_map"].sum())

    def compute(self) -> dict[str, Any]:
        """``{"episodes", "map_answers", "model_iou", "guided_map_iou"}`` (IoUs as fractions); ``{}``
        when no episode was checked."""
        if not self.model_iou:
            return {}
        return {"episodes": len(self.model_iou), "map_answers": self.map_answers,
                "model_iou": statistics.fmean(self.model_iou), "guided_map_iou": statistics.fmean(self.map_iou)}


def predictors(model: torch.nn.Module, recall: MapRecall | None = None, with_baselines: bool = True,
               auc: MapAUC | None = None, checks: SupportCheckTally | None = None):
    """``batch -> {name: prediction}``: the model's logits and the two baselines' label maps,
    from one forward pass (logits are scored by bilinear resize then argmax, as PFENet).

    With ``recall``, the region maps of each batch are also scored against
    ``batch["query_mask"]`` (Table 7); with ``auc``, their threshold-free AUC / AP
    (:class:`MapAUC`). Without baselines it returns the model's logits. With ``checks``, the model
    answers through the support check (:class:`~fewshot_priors.engine.support_check.SupportCheck`,
    ``eval.support_check``), tallied in ``checks``.
    """
    if checks is not None:
        from fewshot_priors.engine.support_check import SupportCheck

        model = SupportCheck(model)

    def predict(batch: Mapping[str, Any]) -> dict[str, torch.Tensor] | torch.Tensor:
        out = model(batch["query_image"], batch["support_images"], batch["support_masks"])
        if checks is not None:
            checks.update(out)
        if recall is not None:
            recall.update(out, batch["query_mask"])
        if auc is not None:
            auc.update(out, batch["query_mask"])
        if not with_baselines:
            return out["logits"].float()
        size = batch["query_image"].shape[-2:]
        guided = upsample_map(out["guided_map"], size)
        return {
            "qgnet": out["logits"].float(),
            "baseline_guided_map_0.5": (guided >= 0.5).long(),
            "baseline_all_foreground": torch.ones_like(guided, dtype=torch.long),
        }

    return predict


@torch.no_grad()
def episode_rows(model: torch.nn.Module, dataset, indices: Iterable[int]) -> list[dict[str, Any]]:
    """Fig. 5 rows (see :func:`fewshot_priors.viz.episode_figure`) for some episodes of ``dataset``."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for i in indices:
        ep = dataset[i]
        out = model(ep["query_image"][None].to(device), ep["support_images"][None].to(device),
                    ep["support_masks"][None].to(device))
        size = ep["query_image"].shape[-2:]
        pm = out.get("prior_map")
        rows.append({
            "query_image": ep["query_image"],
            "support_image": ep["support_images"][0],
            "support_mask": ep["support_masks"][0],
            "guided_map": upsample_map(out["guided_map"], size)[0].cpu(),
            "prior_map": upsample_map(pm, size)[0].cpu() if pm is not None else None,
            "prediction": out["logits"].argmax(1)[0].cpu(),
            "ground_truth": ep["query_mask"],
            "shots": int(ep["support_images"].shape[0]),
        })
    return rows


def figure_episodes(dataset, n: int) -> list[int]:
    """The first ``n`` test episodes, taken round-robin over the held-out classes."""
    by_class: dict[int, list[int]] = {}
    for i in range(len(dataset)):
        c = int(dataset.episode(i)[1]) if hasattr(dataset, "episode") else 0
        by_class.setdefault(c, []).append(i)
    picked: list[int] = []
    while len(picked) < min(n, len(dataset)):
        for idx in by_class.values():
            if idx and len(picked) < n:
                picked.append(idx.pop(0))
    return sorted(picked)


# --------------------------------------------------------------------------- tables


def pct(x: float | None) -> str:
    """``0.1234 -> "12.3"``; ``"n/a"`` for None and non-finite values."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def spread(xs: Sequence[float]) -> dict[str, Any]:
    """Mean, std, min, max and count of the finite values of ``xs`` (NaN fields when there are none)."""
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per shot and method: the fold-averaged mIoU / FB-IoU of each seed, and their mean, std, min-max.

    ``runs`` holds one entry per (seed, fold) with ``results[shot][method] = {"miou", "fbiou"}``.
    A method's seed value is the mean over the folds of that seed (PASCAL-5i style).
    """
    table: dict[str, dict[str, Any]] = {}
    seeds = sorted({r["seed"] for r in runs})
    for r in runs:
        for shot, methods in r["results"].items():
            for name, m in methods.items():
                cell = table.setdefault(shot, {}).setdefault(name, {"per_seed": {s: {"miou": [], "fbiou": []}
                                                                                  for s in seeds}})
                cell["per_seed"][r["seed"]]["miou"].append(m["miou"])
                cell["per_seed"][r["seed"]]["fbiou"].append(m["fbiou"])
    for methods in table.values():
        for cell in methods.values():
            per_seed = {s: {k: statistics.fmean(v) for k, v in d.items() if v} for s, d in cell["per_seed"].items()
                        if d["miou"]}
            cell["folds_per_seed"] = {s: len(d["miou"]) for s, d in cell["per_seed"].items()}
            cell["per_seed"] = per_seed
            cell["miou"] = spread([d["miou"] for d in per_seed.values()])
            cell["fbiou"] = spread([d["fbiou"] for d in per_seed.values()])
    return table


def paired_gains(runs: Sequence[Mapping[str, Any]], baseline: str) -> dict[str, Any]:
    """Per shot and method, the mIoU gain over ``baseline`` paired on the same (seed, fold) episodes.

    Each seed's gain is the mean over its folds of ``miou(method) - miou(baseline)``; the result holds
    their :func:`spread` (``"gain"``) and how many (seed, fold) units the method is above the baseline in
    (``"above"`` of ``"units"``). Pairing removes the episodes' shared difficulty, which dominates the
    spread of the raw scores on a small set.
    """
    acc: dict[str, dict[str, dict[Any, list[float]]]] = {}
    for r in runs:
        for shot, methods in r["results"].items():
            if baseline not in methods:
                continue
            base = methods[baseline]["miou"]
            for name, m in methods.items():
                if name != baseline:
                    acc.setdefault(shot, {}).setdefault(name, {}).setdefault(r["seed"], []).append(m["miou"] - base)
    out: dict[str, Any] = {}
    for shot, methods in acc.items():
        for name, per_seed in methods.items():
            diffs = [d for ds in per_seed.values() for d in ds]
            out.setdefault(shot, {})[name] = {"gain": spread([statistics.fmean(ds) for ds in per_seed.values()]),
                                              "above": sum(d > 0 for d in diffs), "units": len(diffs)}
    return out


def gains_markdown(gains: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of :func:`paired_gains` for several baselines (``{baseline: gains}``), in points."""
    names = list(gains)
    lines = ["", "mIoU gain in points over each baseline, paired on the same (seed, fold) episodes (mean ± std "
                 "[min, max] over seeds of the fold-averaged difference; units = (seed, fold) pairs above the "
                 "baseline):", "",
             "| shots | method | " + " | ".join(f"gain over {b} | units above" for b in names) + " |",
             "|---|---|" + "---|---|" * len(names)]
    rows: dict[tuple[str, str], list[str]] = {}
    for b in names:
        for shot, methods in gains[b].items():
            for name, g in methods.items():
                if name in gains:
                    continue
                cell = g["gain"]
                rows.setdefault((shot, name), [])
                rows[(shot, name)].append(f"{pct(cell['mean'])} ± {pct(cell['std'])} [{pct(cell['min'])}, "
                                          f"{pct(cell['max'])}] | {g['above']}/{g['units']}")
    for (shot, name), cells in rows.items():
        if len(cells) == len(names):
            lines.append(f"| {shot} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(summary: Mapping[str, Any], header: str = "") -> str:
    """Markdown table (mean ± std [min-max] over seeds, %) of :func:`summarize`'s output."""
    lines = [header] if header else []
    lines += ["| shots | method | mIoU mean ± std [min-max] | FB-IoU mean ± std [min-max] | seeds |",
              "|---|---|---|---|---|"]
    for shot, methods in summary.items():
        for name, cell in methods.items():
            m, f = cell["miou"], cell["fbiou"]
            lines.append(f"| {shot} | {name} | {pct(m['mean'])} ± {pct(m['std'])} [{pct(m['min'])}-{pct(m['max'])}] "
                         f"| {pct(f['mean'])} ± {pct(f['std'])} [{pct(f['min'])}-{pct(f['max'])}] | {m['n']} |")
    return "\n".join(lines) + "\n"


def ablation_markdown(ablation: Mapping[str, Any]) -> str:
    """Markdown tables (mIoU / FB-IoU, Table-7 recall) of the ``"ablation"`` entry of the demo's ``metrics.json``."""
    variants = ablation["variants"]
    lines = ["| model | 1-shot mIoU | 1-shot FB-IoU | 5-shot mIoU | 5-shot FB-IoU |",
             "|---|---|---|---|---|"]
    for key, v in variants.items():
        r1, r5 = v["results"]["1-shot"], v["results"]["5-shot"]
        lines.append(f"| {key}: {v['description']} | {pct(r1['miou'])} | {pct(r1['fbiou'])} | "
                     f"{pct(r5['miou'])} | {pct(r5['fbiou'])} |")
    for shots in ("1-shot", "5-shot"):
        thr = None
        rows = []
        for key, v in variants.items():
            for name, rec in v["recall"][shots].items():
                thr = rec["thresholds"]
                rows.append(f"| {key} | {name} | " + " | ".join(pct(x) for x in rec["pooled"]) + " |")
                if "area" in rec:
                    rows.append(f"| {key} | {name}: area of R | " + " | ".join(pct(x) for x in rec["area"]) + " |")
        if thr is None:
            continue
        lines += ["", f"Recall (%) of the ground-truth query mask, {shots}, pooled over all episodes "
                      "(object region R at threshold alpha; 'area of R' = share of the scored pixels inside R, "
                      "which a recall alone does not penalise):", "",
                  "| model | map | " + " | ".join(f"{a:g}" for a in thr) + " |",
                  "|---|---|" + "---|" * len(thr)] + rows
    return "\n".join(lines) + "\n"
