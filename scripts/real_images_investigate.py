"""Collapse investigation on TRAINING classes only (docs/how-to/real-images.md).

Validation classes = the classes with 2-4 images: they are never held out by the
cross-validation (which holds out classes with >= 5 images), so tuning on them
never sees a test class. QGNet trains on every other class; 1-shot on the
validation classes. Usage:
  python scripts/real_images_investigate.py --root DATA --out DIR --name NAME [key=value ...]
keys: image_size, lr, epochs, max_steps, fg_weight, pretrain_epochs, batch_size, min_pixels, episodes, variant
"""
import argparse, copy, json, sys, time
from pathlib import Path
import torch
from fewshot_priors.real_images import PRESETS, class_image_counts, list_unique_images, train_and_evaluate

ap = argparse.ArgumentParser()
ap.add_argument("--root", required=True); ap.add_argument("--out", required=True); ap.add_argument("--name", required=True)
ap.add_argument("--seed", type=int, default=0); ap.add_argument("--prior", default=None)
ap.add_argument("kv", nargs="*")
a = ap.parse_args()
p = copy.deepcopy(PRESETS["full"])
kv = dict(x.split("=") for x in a.kv)
for k, v in kv.items():
    v = json.loads(v)
    if k in ("lr", "epochs", "max_steps", "batch_size"): p["train"][k] = v
    elif k == "pretrain_epochs": p["pretrain"]["epochs"] = v
    elif k == "image_size": p["image_size"] = v; p["pretrain"]["size"] = v
    elif k in p: p[k] = v
counts = class_image_counts(a.root)
val = sorted(c for c, n in counts.items() if 2 <= n <= 4)
out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
t0 = time.perf_counter(); c0 = time.process_time()
prior = a.prior
if prior is None:
    from fewshot_priors.engine.pretrain import pretrain
    pre = pretrain(images=list_unique_images(a.root), output_dir=str(out / f"pre_{a.name}"), backbone="resnet18",
                   seed=a.seed, device="cpu", progress=False, log_every=5, amp=True, **p["pretrain"])
    prior = pre["prior_extractor"]
    print("pretrain", pre["step"], "steps", round(time.perf_counter() - t0, 1), "s wall", round(time.process_time() - c0, 1), "s cpu; loss", pre["history"][-1], flush=True)
t1 = time.perf_counter(); c1 = time.process_time()
r = train_and_evaluate(a.root, val, out / a.name, p, seed=a.seed, prior_path=prior, shots=(1,),
                       variant=kv.get("variant", "qgnet").strip('"'))
res = r["results"]["1-shot"]
# foreground share predicted: from the qgnet confusion if present
line = {"name": a.name, "kv": kv, "train_steps": r["train"]["steps"], "final_loss": r["train"]["final_loss"],
        "timings": r["timings_s"], "unit_cpu_s": round(time.process_time() - c1, 1), "unit_wall_s": round(time.perf_counter() - t1, 1), "prior": prior,
        **{f"{n} mIoU": round(100 * v["miou"], 2) for n, v in res.items()},
        **{f"{n} FB-IoU": round(100 * v["fbiou"], 2) for n, v in res.items()},
        "pred_fg_share": round(res[list(res)[0] if "qgnet" not in res else "qgnet"].get("predicted_foreground_share", -1), 4)}
print(json.dumps(line), flush=True)
with open(out / "results.jsonl", "a") as f: f.write(json.dumps(line) + "\n")
