"""Two augmented views with corresponding superpixel patches (MoCo v2 "aug+", kornia).

The geometric part (RandomResizedCrop, horizontal flip) is applied to the image
and to its superpixel label map *with the same parameters*; labels are resampled
by nearest neighbour, never blended, so id ``j`` names the same patch in both
views. Photometric ops (colour jitter, grayscale, blur) touch the image only. The views
stay RGB in ``[0, 1]``: :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo` normalises them
with its encoder's own mean/std. Patches that vanish or shrink below ``min_area`` pixels in a
view are set to ``-1`` in that view (so :func:`~fewshot_priors.ops.superpixel_pool.superpixel_pool`
reports them invalid and the local loss drops them).
"""

from __future__ import annotations

from typing import Any

import kornia.augmentation as K
import torch


def blur_kernel_size(size: int) -> int:
    """SimCLR / MoCo v2 rule: an odd kernel of about 10 % of the crop size (>= 3)."""
    k = int(0.1 * size)
    return max(3, k + 1 - k % 2)


def drop_small_segments(labels: torch.Tensor, min_area: int) -> torch.Tensor:
    """Set ids covering fewer than ``min_area`` pixels of their image to ``-1``.

    Args:
        labels: ``B, H, W`` int64 (``-1`` = ignored).
        min_area: threshold in pixels (``<= 1`` only drops nothing).

    Returns:
        ``B, H, W`` int64 (ids unchanged, small ones replaced by ``-1``).
    """
    if min_area <= 1 or labels.numel() == 0:
        return labels
    B = labels.shape[0]
    n = int(labels.max()) + 1
    if n <= 0:
        return labels
    flat = labels.reshape(B, -1)
    keep = flat >= 0
    offs = torch.arange(B, device=labels.device)[:, None] * n + flat.clamp(min=0)
    area = torch.bincount(offs[keep], minlength=B * n).view(B, n)
    small = torch.gather(area, 1, flat.clamp(min=0)) < min_area
    return torch.where(keep & ~small, flat, torch.full_like(flat, -1)).view_as(labels)


class TwoViewAugment:
    """MoCo v2 "aug+" producing two views plus their transformed label maps.

    Args:
        size: output side length (224 in the paper; the demo uses e.g. 96).
        scale: RandomResizedCrop area range.
        ratio: RandomResizedCrop aspect-ratio range.
        hflip_p: horizontal-flip probability.
        color: apply the photometric ops (disable to check patch correspondence).
        jitter: ColorJitter (brightness, contrast, saturation, hue).
        jitter_p: probability of the colour jitter.
        grayscale_p: probability of grayscale.
        blur_p: probability of Gaussian blur (sigma in ``blur_sigma``, kernel ~10 % of size).
        blur_sigma: Gaussian-blur sigma range.
        min_area: a patch smaller than this (pixels, in the output view) is set to
            ``-1`` in that view.

    Call with ``images`` ``B, 3, H, W`` (uint8, or float in [0, 1]) and ``labels``
    ``B, H, W`` (int, ``-1`` = ignored); every random choice is drawn from
    ``generator`` (or a fresh generator seeded with ``seed``), never from the
    global RNG state, so results are reproducible and independent of other code.
    """

    def __init__(
        self,
        size: int = 224,
        *,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_p: float = 0.5,
        color: bool = True,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        min_area: int = 4,
    ) -> None:
        if int(size) < 8:
            raise ValueError(f"`size` must be >= 8, got {size}")
        self.size = int(size)
        self.min_area = int(min_area)
        self.geometric = K.AugmentationSequential(
            K.RandomResizedCrop((self.size, self.size), scale=scale, ratio=ratio),
            K.RandomHorizontalFlip(p=hflip_p),
            data_keys=["input", "mask"],
        )
        ops: list[Any] = []
        if color:
            ops += [
                K.ColorJitter(*jitter, p=jitter_p),
                K.RandomGrayscale(p=grayscale_p),
                K.RandomGaussianBlur(blur_kernel_size(self.size), blur_sigma, p=blur_p),
            ]
        self.photometric = K.ImageSequential(*ops) if ops else None

    def __repr__(self) -> str:
        return f"TwoViewAugment(size={self.size}, color={self.photometric is not None}, min_area={self.min_area})"

    @staticmethod
    def _prepare(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"`images` must be a tensor of shape B, 3, H, W, got {shape}")
        if images.dtype == torch.uint8:
            images = images.float() / 255
        elif not images.is_floating_point():
            raise TypeError(f"`images` must be uint8 or float in [0, 1], got dtype {images.dtype}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 3:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"`labels` must be a tensor of shape B, H, W, got {shape}")
        if labels.is_floating_point():
            raise TypeError(f"`labels` must be an integer tensor, got dtype {labels.dtype}")
        if labels.shape[0] != images.shape[0] or labels.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"`labels` shape {tuple(labels.shape)} does not match `images` {tuple(images.shape)} (B, H, W)"
            )
        return images, labels

    def view(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented view: ``(B, 3, S, S float in [0, 1], B, S, S int64)``."""
        images, labels = self._prepare(images, labels)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            img, lab = self.geometric(images, labels[:, None].float())
            if self.photometric is not None:
                img = self.photometric(img)
        img = img.clamp(0, 1)
        lab = drop_small_segments(lab[:, 0].round().long(), self.min_area)
        return img, lab

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Two independent views of the same images.

        Args:
            images: ``B, 3, H, W`` uint8 or float in [0, 1].
            labels: ``B, H, W`` integer superpixel ids (``-1`` = ignored).
            generator: source of randomness (takes precedence over ``seed``).
            seed: seed of a fresh generator (default 0) when ``generator`` is None.

        Returns:
            ``{"view_a", "view_b"}`` ``B, 3, S, S`` and ``{"labels_a", "labels_b"}``
            ``B, S, S`` int64.
        """
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        va, la = self.view(images, labels, generator)
        vb, lb = self.view(images, labels, generator)
        return {"view_a": va, "view_b": vb, "labels_a": la, "labels_b": lb}
