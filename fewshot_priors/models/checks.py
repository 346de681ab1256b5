"""Input validation of a QGNet call (shapes, dtypes, devices, and optional value checks).

Shape / dtype / device checks read only metadata and always run. Value checks read
tensor values (a host-device synchronisation on GPU): they run unless turned off, in the
current thread or task with :func:`fewshot_priors.set_checks` / :func:`fewshot_priors.checks_disabled`
or per call with ``QGNet.forward(..., check_inputs=False)``.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from fewshot_priors.ops.checks import (
    IGNORE_INDEX,
    check_float,
    check_same,
    checks_enabled,
    clean_mask,
    warn_ignore_only,
)

__all__ = ["UNIT_RANGE_TOL", "check_dtype_device", "check_inputs", "check_unit_range", "resolve_check_inputs",
           "warn_ignore_only_masks"]

#: Slack of the ``[0, 1]`` image-range check (float rounding of resizes and augmentations).
UNIT_RANGE_TOL = 1e-3


def resolve_check_inputs(check_inputs: bool | None) -> bool:
    """Per-call switch of the value checks: ``None`` -> the context's switch
    (:func:`~fewshot_priors.ops.checks_enabled`), else the bool given."""
    if check_inputs is None:
        return checks_enabled()
    if not isinstance(check_inputs, bool):
        raise TypeError(f"`check_inputs` must be True, False or None (the context's switch), got {check_inputs!r}")
    return check_inputs


def check_unit_range(name: str, images: torch.Tensor) -> None:
    """Images must be RGB in ``[0, 1]`` (each backbone normalises them itself): raw 0-255
    pixels, already mean/std-normalised images and NaN/inf raise ``ValueError``."""
    if images.numel() == 0:
        return
    x = images.detach()
    low, high = float(x.amin()), float(x.amax())
    if low >= -UNIT_RANGE_TOL and high <= 1 + UNIT_RANGE_TOL:
        return
    if not (math.isfinite(low) and math.isfinite(high)):
        what, hint = "non-finite values (NaN or inf)", "check the data pipeline"
    elif high > 2 and low >= 0:
        what, hint = f"values up to {high:.4g}", "raw 0-255 pixels? pass `image / 255`"
    else:
        what, hint = (f"values in [{low:.4g}, {high:.4g}]",
                      "already normalised with a mean/std? pass the unnormalised RGB image: the model's "
                      "backbones normalise it with their own statistics (`model.backbone.mean` / `.std`)")
    raise ValueError(f"`{name}` must hold RGB images in [0, 1], got {what}; {hint}")


def check_dtype_device(model: nn.Module, name: str, images: torch.Tensor) -> None:
    """Images must match the model parameters' dtype (unless autocast casts them) and device."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return
    if images.device != param.device:
        raise ValueError(
            f"`{name}` is on {images.device} but the model is on {param.device}; "
            f"move the inputs with `.to({str(param.device)!r})` (or the model with `.to(...)`)"
        )
    if images.dtype != param.dtype and not torch.is_autocast_enabled(images.device.type):
        hint = (
            "on CPU use float32, or bfloat16 for mixed precision (`model.to(torch.bfloat16)` or "
            "`torch.autocast('cpu', dtype=torch.bfloat16)`)"
            if images.device.type == "cpu"
            else "use `torch.autocast` for mixed precision"
        )
        raise TypeError(
            f"`{name}` has dtype {images.dtype} but the model's parameters are {param.dtype}; pass "
            f"{param.dtype} images or convert the model with `.to(dtype)`; {hint}"
        )

def warn_ignore_only_masks(masks: torch.Tensor) -> None:
    """Warn about support masks with no foreground but some 255: most likely a 0/255
    binary image, whose 255 means "ignore" here (so the shot would be silently empty).
    The ops' one check, :func:`fewshot_priors.ops.checks.warn_ignore_only`, under the name
    ``support_masks``; :func:`check_inputs` runs it through ``clean_mask``."""
    warn_ignore_only("support_masks", masks)


def check_inputs(
    model: nn.Module,
    query_image: torch.Tensor,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    query_mask: torch.Tensor | None,
    *,
    value_checks: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate one QGNet call and bring the inputs to the forms the model uses.

    Shape / dtype / device checks always run (they read only metadata); the value checks
    (image range, mask values, 0/255 warnings) run when ``value_checks`` is True: they
    read tensor values, i.e. synchronise with the GPU.

    Returns:
        ``support_images`` as ``B, K, 3, H', W'``; the support masks as a float
        ``B, K, H', W'`` tensor on the images' device and dtype, *cleaned* (255 -> 0), so
        that the ops downstream need not clean them again; ``query_mask`` as a long
        ``B, H, W`` tensor on the query's device (or ``None``).
    """
    check_float("query_image", query_image)
    if query_image.dim() != 4 or query_image.shape[1] != 3:
        raise ValueError(f"`query_image` must have shape B, 3, H, W, got {tuple(query_image.shape)}")
    check_float("support_images", support_images)
    b = query_image.shape[0]
    if support_images.dim() == 4:
        support_images = support_images.unsqueeze(1)
    if support_images.dim() != 5 or support_images.shape[2] != 3:
        raise ValueError(
            "`support_images` must have shape B, K, 3, H, W (or B, 3, H, W for 1 shot), "
            f"got {tuple(support_images.shape)}"
        )
    check_same("batch size", "query_image", b, "support_images", support_images.shape[0])
    k = support_images.shape[1]
    if k < 1:
        raise ValueError("`support_images` must hold at least one shot (K >= 1)")
    for name, t in (("query_image", query_image), ("support_images", support_images)):
        if t.shape[-1] == 0 or t.shape[-2] == 0:
            raise ValueError(f"`{name}` must have a non-zero spatial size H, W, got {tuple(t.shape)}")
    if support_images.dtype != query_image.dtype:
        raise TypeError(
            f"`support_images` has dtype {support_images.dtype} but `query_image` has {query_image.dtype}; "
            "pass both in the model's dtype"
        )
    check_dtype_device(model, "query_image", query_image)
    check_dtype_device(model, "support_images", support_images)
    if value_checks:
        check_unit_range("query_image", query_image)
        check_unit_range("support_images", support_images)
    if not isinstance(support_masks, torch.Tensor):
        raise TypeError(f"`support_masks` must be a torch.Tensor, got {type(support_masks).__name__}")
    m = support_masks
    if m.dim() == 5 and m.shape[2] == 1:
        m = m.squeeze(2)
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.dim() != 4 or (m.shape[1] != k and not (k == 1 and m.shape[1] == 1)):
        raise ValueError(
            f"`support_masks` must have shape B, K, H, W with K={k} (or B, H, W / B, 1, H, W for 1 shot), "
            f"got {tuple(support_masks.shape)}"
        )
    check_same("batch size", "query_image", b, "support_masks", m.shape[0])
    if tuple(m.shape[-2:]) != tuple(support_images.shape[-2:]):
        raise ValueError(
            f"`support_masks` spatial size {tuple(m.shape[-2:])} must match `support_images` "
            f"{tuple(support_images.shape[-2:])}"
        )
    # with value checks on, clean_mask also warns about ignore-only (0/255) shots
    m = clean_mask("support_masks", m, check_values=value_checks)
    m = m.to(device=support_images.device, dtype=support_images.dtype)
    if query_mask is not None:
        if not isinstance(query_mask, torch.Tensor):
            raise TypeError(f"`query_mask` must be a torch.Tensor, got {type(query_mask).__name__}")
        qm = query_mask.squeeze(1) if query_mask.dim() == 4 and query_mask.shape[1] == 1 else query_mask
        if qm.dim() != 3 or qm.shape[0] != b or tuple(qm.shape[-2:]) != tuple(query_image.shape[-2:]):
            raise ValueError(
                f"`query_mask` must have shape B, H, W = {(b, *query_image.shape[-2:])} "
                f"(or B, 1, H, W), got {tuple(query_mask.shape)}"
            )
        if query_mask.dtype == torch.bool or query_mask.is_complex():
            raise TypeError(
                f"`query_mask` must hold integer labels 0, 1 and 255 (ignore), got dtype {query_mask.dtype}"
            )
        if value_checks and qm.is_floating_point() and not bool((qm == qm.round()).all()):
            raise ValueError("`query_mask` must hold integer labels 0, 1 (and 255 = ignore)")
        qm = qm.long()
        if value_checks:
            bad = ~((qm == 0) | (qm == 1) | (qm == IGNORE_INDEX))
            if bool(bad.any()):
                raise ValueError(
                    f"`query_mask` must hold labels 0 (background), 1 (foreground) or 255 (ignore), "
                    f"found {qm[bad].unique()[:5].tolist()}"
                )
            flat = qm.flatten(1)
            binary_image = (flat == IGNORE_INDEX).any(1) & (flat == 0).any(1) & ~(flat == 1).any(1)
            if bool(binary_image.any()):
                warnings.warn(
                    f"`query_mask` items {binary_image.nonzero().flatten().tolist()[:5]} hold 0 and 255 but "
                    "no foreground pixel (1); 255 means 'ignore'. Either the object was cropped out or "
                    "shrunk away by the augmentation / resize (the 255 is then padding or boundary), "
                    "or it is a 0/255 binary image: then pass `mask // 255` (labels 0 / 1, 255 = ignore)",
                    stacklevel=3,
                )
        query_mask = qm.to(query_image.device)
    return support_images, m, query_mask
