"""Run a trained QGNet on your own images: K annotated supports + a query -> a mask at its size.

:class:`Predictor` takes images and masks as files, PIL images or numpy arrays and returns
numpy arrays at the query's ORIGINAL size, made exactly as the evaluation makes them: the
test transform of the datasets (:class:`~fewshot_priors.data.TestTransform`: longer side to
``image_size``, padded to a square) and :func:`~fewshot_priors.data.restore_prediction`
(logits resized bilinearly, then the argmax). :func:`load_trained_model` reads the three
forms a trained model comes in: a training run folder, a ``save_pretrained`` folder, or a
checkpoint (``X.safetensors`` + ``X.json``).

Example:
    >>> predictor = Predictor.from_trained("runs/my_run", device="cpu")  # doctest: +SKIP
    >>> out = predictor("query.jpg", [("support.jpg", "support.png")])  # doctest: +SKIP
    >>> out.mask.shape, out.mask.dtype  # the query's H0, W0  # doctest: +SKIP
    ((375, 500), dtype('uint8'))
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .._validate import is_int
from ..data import TestTransform, restore_prediction
from ..data.io import binary_mask, rgb_image
from ..models.hub import CONFIG_NAME, WEIGHTS_NAME, from_pretrained
from .checkpoint import checkpoint_paths, load_checkpoint
from .runtime import config_device, resolve_device
from .support_check import leave_one_out_iou, map_answers, map_logits

__all__ = ["Prediction", "Predictor", "load_trained_model", "model_from_checkpoint"]

#: The input size of a model whose folder records none (``save_pretrained`` folders).
DEFAULT_IMAGE_SIZE = 473

#: An image or a mask: a file, a PIL image or a numpy array.
ImageLike = str | os.PathLike | np.ndarray | Image.Image


@dataclass(frozen=True)
class Prediction:
    """What :class:`Predictor` returns for one query, every array ``H0, W0`` (the query's size).

    Attributes:
        mask: uint8 0 (background) / 1 (foreground): the argmax of the logits resized to
            ``H0, W0``, as the evaluation scores it.
        foreground: float32 foreground probability (softmax of the resized logits).
        guided_map: float32 guided region map (PFENet's prior, in [0, 1]) resized to ``H0, W0``.
        prior_map: float32 prior region map (eqs. 9-12), ``None`` for a model without prior.
        support_check: with the support check and K >= 2 supports (:class:`Predictor`),
            ``{"model_iou", "guided_map_iou", "answer"}``: the mean IoU of the model and of the
            guided map >= 0.5 on the supports, each segmented from the others, and which of the two
            answered (``"model"``, or ``"guided_map"``: then ``mask`` is the map's answer and
            ``foreground`` the softmax of :func:`~fewshot_priors.engine.support_check.map_logits`); else ``None``.
    """

    mask: np.ndarray
    foreground: np.ndarray
    guided_map: np.ndarray
    prior_map: np.ndarray | None
    support_check: dict[str, Any] | None = None


def model_from_checkpoint(cfg: Mapping, checkpoint: str | os.PathLike,
                          device: torch.device | str | None = None) -> torch.nn.Module:
    """The QGNet of ``cfg["model"]`` with the weights of ``checkpoint`` (no backbone file is
    read and nothing is downloaded: every weight comes from the checkpoint), in eval mode.

    Raises:
        CheckpointError: a missing or corrupt checkpoint, or one that does not fit the model.
    """
    from .build import build_model

    model = build_model(cfg, pretrained=False, weights=None, prior_weights=None)
    load_checkpoint(checkpoint, model=model)
    return model.to(resolve_device("cpu" if device is None else str(device))).eval()


def _checkpoint_config(stem: Path) -> Path | None:
    """The config of checkpoint ``stem``: ``<stem>.yaml`` (``convert``) or the run's ``config.yaml``."""
    for cand in (stem.with_name(stem.name + ".yaml"), stem.parent / "config.yaml"):
        if cand.is_file():
            return cand
    return None


def load_trained_model(source: str | os.PathLike, *, config: str | os.PathLike | None = None,
                       overrides: Sequence[str] | Mapping[str, Any] = (),
                       device: torch.device | str | None = None) -> tuple[torch.nn.Module, dict | None]:
    """A trained QGNet from a run folder, a ``save_pretrained`` folder or a checkpoint.

    Args:
        source: a training run folder (``config.yaml`` + ``best`` or ``last`` checkpoint; ``best``
            first), a :meth:`~fewshot_priors.models.QGNet.save_pretrained` folder
            (``config.json`` + ``model.safetensors``), or a checkpoint (``X``, ``X.safetensors``
            or ``X.json``; its config is ``config``, else ``X.yaml`` beside it, else the
            ``config.yaml`` of its folder).
        config: the config (shipped name or YAML file) of a checkpoint or run folder.
        overrides: config overrides (``["model.region_map_backend=chunked"]``).
        device: where the model goes (``"auto"``, ``"cpu"``, ``"cuda:N"``; default: the config's
            ``experiment.device``, ``"auto"`` for a ``save_pretrained`` folder).

    Returns:
        ``(model in eval mode, full config)``; the config is ``None`` for a
        ``save_pretrained`` folder (it records the ``model`` section only).

    Raises:
        FileNotFoundError: ``source`` is none of the three forms (the message says what was looked for).
        CheckpointError: a corrupt or mismatching checkpoint.
    """
    from ..config import load_config

    src = Path(source)
    if src.is_dir() and (src / CONFIG_NAME).is_file() and (src / WEIGHTS_NAME).is_file():
        if config is not None or overrides:
            raise ValueError(f"{src} is a save_pretrained folder: it carries its own configuration, so "
                             "--config / --set do not apply to it")
        model = from_pretrained(src)
        return model.to(resolve_device("auto" if device is None else str(device))).eval(), None
    if src.is_dir():
        stems = [src / name for name in ("best", "last") if checkpoint_paths(src / name)[0].is_file()]
        if not stems:
            raise FileNotFoundError(
                f"{src} holds no trained model: expected a run folder (config.yaml + best.safetensors or "
                f"last.safetensors) or a save_pretrained folder ({CONFIG_NAME} + {WEIGHTS_NAME})")
        stem = stems[0]
    else:
        stem = checkpoint_paths(src)[0].with_suffix("")
        if not checkpoint_paths(stem)[0].is_file():
            raise FileNotFoundError(f"no trained model at {src}: give a run folder, a save_pretrained folder "
                                    "or a checkpoint (X.safetensors with its X.json)")
    cfg_path = config if config is not None else _checkpoint_config(stem)
    if cfg_path is None:
        raise FileNotFoundError(f"no config for checkpoint {stem}: neither {stem.name}.yaml nor config.yaml "
                                "beside it; pass the config it was trained with (--config)")
    cfg = load_config(cfg_path, overrides)
    return model_from_checkpoint(cfg, stem, config_device(cfg) if device is None else device), cfg


def _to_original(x: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
    """``C, S, S`` maps on the square test canvas -> ``C, H0, W0`` (the canvas mapping of
    :func:`~fewshot_priors.data.restore_prediction`: resize to ``L x L``, ``L = max(H0, W0)``,
    keep the top-left ``H0 x W0``)."""
    side = max(orig_hw)
    y = F.interpolate(x[None].float(), size=(side, side), mode="bilinear", align_corners=True)[0]
    return y[:, : orig_hw[0], : orig_hw[1]]


class Predictor:
    """Segment query images given K annotated support images with a trained QGNet.

    Args:
        model: a trained :class:`~fewshot_priors.models.QGNet` (or a module with its call
            signature returning ``logits``, ``guided_map`` and ``prior_map``).
        image_size: the model's input size (its config's ``data.image_size``).
        device: where to run (default: the model's device); the model is moved there and put in
            eval mode.
        support_check: with K >= 2 supports, segment each support from the others first and
            answer with the guided map >= 0.5 if it did better on them than the model
            (:mod:`~fewshot_priors.engine.support_check`; ``eval.support_check`` of the model's config
            with :meth:`from_trained`).

    Call it with a query and ``supports``, a sequence of ``(image, mask)`` pairs (K shots).
    Images are files, PIL images or ``H, W, 3`` arrays (uint8, or float in [0, 1]); masks
    are files, PIL images or ``H, W`` arrays read by :func:`~fewshot_priors.data.io.binary_mask`:
    0/1 or 0/255 masks, or, with ``class_id``, the pixels of that class in a label map
    (a palette PNG such as VOC's). 255 in a mask is ignored. The result is a :class:`Prediction`.

    Example:
        >>> import numpy as np
        >>> from fewshot_priors.models import QGNet
        >>> model = QGNet("resnet18", use_prior=False, bins=(4, 2), channels=16)
        >>> predictor = Predictor(model, image_size=64)
        >>> photo = np.zeros((30, 50, 3), dtype=np.uint8); mask = np.zeros((30, 50), dtype=np.uint8)
        >>> mask[5:20, 10:30] = 255
        >>> out = predictor(photo, [(photo, mask)])
        >>> out.mask.shape, out.prior_map is None
        ((30, 50), True)
    """

    def __init__(self, model: torch.nn.Module, *, image_size: int = DEFAULT_IMAGE_SIZE,
                 device: torch.device | str | None = None, support_check: bool = False) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a trained QGNet (nn.Module), got {type(model).__name__}")
        if not is_int(image_size) or image_size < 8:
            raise ValueError(f"`image_size` must be an int >= 8 (the model's input size), got {image_size!r}")
        self.device = resolve_device(str(device)) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        if not isinstance(support_check, bool):
            raise TypeError(f"`support_check` must be True or False, got {support_check!r}")
        self.image_size = image_size
        self.transform = TestTransform(image_size)
        self.support_check = support_check

    @classmethod
    def from_trained(cls, source: str | os.PathLike, *, config: str | os.PathLike | None = None,
                     overrides: Sequence[str] | Mapping[str, Any] = (), image_size: int | None = None,
                     device: torch.device | str | None = None) -> Predictor:
        """A predictor of the model :func:`load_trained_model` reads from ``source``;
        ``image_size`` defaults to the config's ``data.image_size`` (473 for a
        ``save_pretrained`` folder, which records none)."""
        model, cfg = load_trained_model(source, config=config, overrides=overrides, device=device)
        if image_size is None:
            image_size = int(cfg["data"]["image_size"]) if cfg is not None else DEFAULT_IMAGE_SIZE
        check = bool(cfg is not None and cfg["eval"].get("support_check", False))
        return cls(model, image_size=image_size, support_check=check)

    def _canvas(self, image: np.ndarray, mask: np.ndarray | None = None):
        """``(3, S, S) image, (S, S) mask, (h, w) content`` on the model's device and dtype."""
        dummy = np.zeros(image.shape[:2], dtype=np.uint8) if mask is None else mask
        x, m, hw = self.transform(image, dummy)
        dtype = next(self.model.parameters()).dtype
        return x.to(self.device, dtype), m.to(self.device), hw

    def _supports(self, supports: Sequence[tuple[ImageLike, ImageLike]], class_id: int | None):
        if not isinstance(supports, Sequence) or not supports:
            raise ValueError("`supports` must be a non-empty sequence of (image, mask) pairs (one per shot)")
        images, masks = [], []
        for k, pair in enumerate(supports):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(f"support {k} must be an (image, mask) pair, got {type(pair).__name__}")
            image, mask = rgb_image(pair[0]), binary_mask(pair[1], class_id=class_id)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"support {k}: the image is {image.shape[0]}x{image.shape[1]} but its mask "
                                 f"is {mask.shape[0]}x{mask.shape[1]}")
            x, m, _ = self._canvas(image, mask)
            if not bool((m == 1).any()):
                raise ValueError(f"support {k} has no foreground pixel at the model's input size "
                                 f"({self.image_size}): mark the object in its mask with 1 or 255"
                                 + (" or give --class-id / class_id" if class_id is None else ""))
            images.append(x)
            masks.append(m)
        return torch.stack(images)[None], torch.stack(masks)[None]

    def __call__(self, query: ImageLike, supports: Sequence[tuple[ImageLike, ImageLike]], *,
                 class_id: int | None = None) -> Prediction:
        """Segment ``query`` given ``supports`` (``(image, mask)`` pairs); ``class_id``: the class
        of the support masks when they are label maps."""
        return next(self.predict([query], supports, class_id=class_id))

    def predict(self, queries: Iterable[ImageLike], supports: Sequence[tuple[ImageLike, ImageLike]], *,
                class_id: int | None = None) -> Iterator[Prediction]:
        """:meth:`__call__` for several queries with the same supports, read once; yields one
        :class:`Prediction` per query, in order, reading each query when it is its turn.

        Raises:
            ValueError / BadDataError: a bad support, before the first query is read.
        """
        s_img, s_mask = self._supports(supports, class_id)  # checked now, not at the first next()
        check = self._support_check(s_img, s_mask)  # once: it depends on the supports only
        return (self._one(rgb_image(q), s_img, s_mask, check) for q in queries)

    @torch.no_grad()
    def _support_check(self, s_img: torch.Tensor, s_mask: torch.Tensor) -> dict[str, Any] | None:
        if not self.support_check or s_img.shape[1] < 2:
            return None
        scores = leave_one_out_iou(self.model, s_img, s_mask)
        answer = "guided_map" if bool(map_answers(scores)[0]) else "model"
        return {"model_iou": float(scores["model"][0]), "guided_map_iou": float(scores["guided_map"][0]),
                "answer": answer}

    @torch.no_grad()
    def _one(self, image: np.ndarray, s_img: torch.Tensor, s_mask: torch.Tensor,
             check: dict[str, Any] | None) -> Prediction:
        x, _, hw = self._canvas(image)
        orig = image.shape[:2]
        out = self.model(x[None], s_img, s_mask)
        if check is not None and check["answer"] == "guided_map":
            logits = map_logits(out["guided_map"], tuple(x.shape[-2:]))[0]
        else:
            logits = out["logits"][0].float()
        mask = restore_prediction(logits, hw, orig)
        fg = _to_original(logits, orig).softmax(0)[1]

        def region(m: torch.Tensor | None) -> np.ndarray | None:
            if m is None:
                return None
            full = F.interpolate(m.float(), size=x.shape[-2:], mode="bilinear", align_corners=True)[0]
            return _to_original(full, orig)[0].cpu().numpy()

        return Prediction(mask=mask.to(torch.uint8).cpu().numpy(), foreground=fg.cpu().numpy(),
                          guided_map=region(out["guided_map"]), prior_map=region(out.get("prior_map")),
                          support_check=check)
