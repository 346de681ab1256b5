"""QGNet on your own photos: point it at a folder dataset (FSS-1000 layout).

    python examples/real_images.py --root /path/to/fss_layout --output-dir real_images_output --seeds 0 1 2 \
        --backbone-weights tf_efficientnet_lite0.in1k.safetensors --prior-weights tf_efficientnet_lite0.in1k.safetensors
    python examples/real_images.py --root /path/to/fss_layout --quick        # a smoke check (its numbers are meaningless)

Layout: ``<class>/<stem>.jpg`` + ``<stem>.png`` (0/255 or 0/1 mask). The classes with
>= 5 images are split into 4 seeded folds; each fold is held out in turn. Same as
``fewshot-priors real-images ...`` (every flag of that command works here; the weights are local
ImageNet files, timm state dicts); the documentation's page 'QGNet on your own photos'
(docs/how-to/real-images.md) gives the protocol, the recipe and the time each preset takes.
"""

import sys

from fewshot_priors.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["real-images", *sys.argv[1:]]))
