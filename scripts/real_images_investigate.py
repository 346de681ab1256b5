"""The collapse investigation of docs/how-to/real-images.md, on TRAINING classes only.

Validation classes = the classes with 2-4 images: the cross-validation of
``fewshot-priors real-images`` holds out only classes with >= 5 images, so these are
never test classes and tuning on them never sees one. QGNet trains on every other
class; scored 1-shot on the validation classes (``--shots 3`` adds 3-shot on the nine of them
with four images). One line of JSON per run is appended
to ``OUT/results.jsonl``::

    python scripts/real_images_investigate.py --root DATA/fss_layout --out DIR --name NAME \
        [--prior prior_extractor.safetensors] [--preset full] [--shots K ...] [--fg-logit-shifts A ...] \
        [key=value ...]

keys: any config key as section.key=value (JSON values), the shortcuts lr, epochs, max_steps,
batch_size, pretrain_epochs, image_size (data.image_size and pretrain.size), and variant (a key of
fewshot_priors.app.real_images.VARIANTS).

--fg-logit-shifts A ... also scores, on the same forward passes, the decision with the foreground
logit lowered by A x log(fg_weight) (A = 1 undoes the class weight: the decision of an unweighted
model if the logits were calibrated), reported as ``qgnet_shift<A>``.
"""

import argparse
import copy
import json
import math
import time
from pathlib import Path

from fewshot_priors.data.folder import class_image_counts, list_unique_images
from fewshot_priors.engine.pretrain import pretrain
from fewshot_priors.app import report
from fewshot_priors.app.real_images import VARIANTS, real_images_config, train_and_evaluate

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--root", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--name", required=True)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--prior", default=None, help="reuse this exported GlobalLocalMoCo prior extractor instead of "
                "pretraining one (from random init)")
ap.add_argument("--preset", default="full", help="real-images preset (full, long, quick)")
ap.add_argument("--fg-logit-shifts", type=float, nargs="+", default=[], metavar="A",
                help="also score the decision with the foreground logit lowered by A x log(fg_weight)")
ap.add_argument("--shots", type=int, nargs="+", default=[1], metavar="K",
                help="score these K besides 1-shot (a K on the validation classes with K+1 images)")
ap.add_argument("kv", nargs="*")
a = ap.parse_args()
kv = dict(x.split("=", 1) for x in a.kv)
variant = kv.pop("variant", "qgnet")
over = {}
short = {"lr": ["train.lr"], "epochs": ["train.epochs"], "max_steps": ["train.max_steps"],
         "batch_size": ["train.batch_size"], "pretrain_epochs": ["pretrain.epochs"],
         "image_size": ["data.image_size", "pretrain.size"]}
for k, v in kv.items():
    v = json.loads(v)
    if "." in k:  # any config key, section.key=value
        over[k] = v
    elif k in short:
        over.update({key: v for key in short[k]})
    else:
        raise SystemExit(f"unknown key {k!r}: use section.key=value or one of {sorted(short)}")
if variant not in VARIANTS:
    raise SystemExit(f"unknown variant {variant!r}: one of {sorted(VARIANTS)}")
cfg = real_images_config(a.preset, over)
if a.fg_logit_shifts:  # the study scores report.predictors(model, ...): add the shifted decisions to it
    plain_predictors = report.predictors

    def shifted_predictors(model, **kwargs):
        predict = plain_predictors(model, **kwargs)

        def with_shifts(batch):
            out = predict(batch)
            if not isinstance(out, dict):  # the model alone (no baselines)
                return out
            for shift in a.fg_logit_shifts:
                logits = out["qgnet"].clone()
                logits[:, 1] -= shift * math.log(model.fg_weight)
                out[f"qgnet_shift{shift:g}"] = logits
            return out

        return with_shifts

    report.predictors = shifted_predictors
counts = class_image_counts(a.root)
val = sorted(c for c, n in counts.items() if 2 <= n <= 4)
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
prior = a.prior
needs_moco = VARIANTS[variant][1] == "moco" or (cfg["model"]["weights"] is None
                                               and cfg["model"]["backbone"] == cfg["pretrain"]["backbone"])
if prior is None and needs_moco:
    t0, c0 = time.perf_counter(), time.process_time()
    pcfg = copy.deepcopy(cfg)
    pcfg["pretrain"]["images"] = list_unique_images(a.root)
    pcfg["pretrain"]["weights"] = None  # GlobalLocalMoCo from random init (the "moco" prior)
    pcfg["experiment"].update(output_dir=str(out / f"pre_{a.name}"), seed=a.seed, device="cpu")
    pre = pretrain(pcfg, progress=False)
    prior = pre["prior_extractor"]
    print("pretrain", pre["step"], "steps", round(time.perf_counter() - t0, 1), "s wall",
          round(time.process_time() - c0, 1), "s cpu; last log", pre["history"][-1], flush=True)
t1, c1 = time.perf_counter(), time.process_time()
r = train_and_evaluate(a.root, val, out / a.name, cfg, seed=a.seed, priors={"moco": prior} if prior else {},
                       shots=tuple(sorted({1, *a.shots})), variant=variant)
res = r["results"]["1-shot"]
line = {"name": a.name, "kv": kv, "variant": variant, "train_steps": r["train"]["steps"],
        "final_loss": r["train"]["final_loss"], "timings": r["timings_s"],
        "unit_cpu_s": round(time.process_time() - c1, 1), "unit_wall_s": round(time.perf_counter() - t1, 1),
        "prior": prior, "episodes": res[variant]["episodes"],
        **{f"{n} mIoU": round(100 * v["miou"], 2) for n, v in res.items()},
        **{f"{n} FB-IoU": round(100 * v["fbiou"], 2) for n, v in res.items()},
        "pred_fg_share": round(res[variant]["predicted_foreground_share"], 4),
        "fg_shares": {n: round(v["predicted_foreground_share"], 4) for n, v in res.items()},
        "true_fg_share": round(res[variant]["true_foreground_share"], 4), "fg_weight": r["train"]["fg_weight"],
        "map_auc": r["map_auc"].get("1-shot", {}),
        **{f"{k}-shot": {n: {"miou": round(100 * v["miou"], 2), "share": round(v["predicted_foreground_share"], 4),
                            "true": round(v["true_foreground_share"], 4), "episodes": v["episodes"]}
                        for n, v in r["results"][f"{k}-shot"].items()}
           for k in a.shots if k != 1 and f"{k}-shot" in r["results"]}}
print(json.dumps(line), flush=True)
with open(out / "results.jsonl", "a") as f:
    f.write(json.dumps(line) + "\n")
