"""Train QGNet on PASCAL-5i from Python (the same as `fewshot-priors train --config ...`).

    python examples/train_pascal.py --root /data/VOCdevkit --fold 0 --weights resnet50_imagenet.safetensors \
        --prior-weights runs/prior/prior_extractor.safetensors

`root` holds VOC2012/{JPEGImages,SegmentationClassAug,ImageSets/Segmentation}. Without
internet, pass ImageNet weights for the backbone as a local file (`--weights`) and the
prior extractor exported by `fewshot-priors pretrain` (`--prior-weights`).
"""

import argparse

from fewshot_priors.config import load_config
from fewshot_priors.engine.build import build_dataset, build_model
from fewshot_priors.engine.evaluate import evaluate
from fewshot_priors.engine.runtime import resolve_device, seed_everything
from fewshot_priors.engine.train import train

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--root", required=True)
parser.add_argument("--fold", type=int, default=0)
parser.add_argument("--backbone", default="resnet50", choices=["vgg16", "resnet50", "resnet101"])
parser.add_argument("--size", type=int, default=473, choices=[321, 473])
parser.add_argument("--weights", help="local ImageNet weights of the backbone (else timm download)")
parser.add_argument("--prior-weights", help="self-supervised prior extractor (.safetensors)")
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()

overrides = {"data.root": args.root}
if args.weights:
    overrides.update({"model.weights": args.weights, "model.pretrained": False})
if args.prior_weights:
    overrides["model.prior_weights"] = args.prior_weights
cfg = load_config(f"pascal/{args.backbone}_{args.size}_fold{args.fold}", overrides)

seed_everything(cfg["experiment"]["seed"])
model = build_model(cfg).to(resolve_device(cfg["experiment"]["device"]))
train_set = build_dataset(cfg, "train")
val_set = build_dataset(cfg, "val", episodes=cfg["data"]["val_episodes"], seed=cfg["eval"]["seed"])
result = train(cfg, model=model, train_set=train_set, resume=args.resume or None,
               val_fn=lambda m: evaluate(m, val_set, seed=cfg["eval"]["seed"], desc="val"))
print(f"best validation mIoU {result['best_miou']:.4f}; checkpoints in {result['output_dir']}")
