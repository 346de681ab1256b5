"""Evaluate a trained QGNet checkpoint with the standard protocol (fixed seed, original resolution).

    python examples/evaluate.py --config pascal/resnet50_473_fold0 --root /data/VOCdevkit \
        --checkpoint runs/pascal_resnet50_473_fold0/best --shots 1 --episodes 5000

Equivalent to `fewshot-priors eval ...`; shows the Python API.
"""

import argparse

from fewshot_priors.config import load_config
from fewshot_priors.engine.build import build_dataset, build_model
from fewshot_priors.engine.checkpoint import load_checkpoint
from fewshot_priors.engine.evaluate import evaluate, format_results, write_results

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", required=True)
parser.add_argument("--root", required=True)
parser.add_argument("--checkpoint", required=True)
parser.add_argument("--shots", type=int, default=1)
parser.add_argument("--episodes", type=int, default=5000)
parser.add_argument("--seed", type=int, default=321)
parser.add_argument("--output", default="results.json")
args = parser.parse_args()

cfg = load_config(args.config, {"data.root": args.root})
model = build_model(cfg, pretrained=False, weights=None, prior_weights=None)  # weights come from the checkpoint
load_checkpoint(args.checkpoint, model=model)
dataset = build_dataset(cfg, "val", shots=args.shots, episodes=args.episodes, seed=args.seed)
results = evaluate(model, dataset, seed=args.seed)
print(format_results(results, f"{args.config}, {args.shots}-shot"))
write_results(results, args.output, shots=args.shots, checkpoint=args.checkpoint)
