"""Whether a download of timm's pretrained weights can happen, decided in seconds.

:func:`check_timm_download` is called by :func:`~fewshot_priors.models.backbone.create_backbone`
before ``timm.create_model(pretrained=True)`` and by the engine's checks before any run
(:mod:`fewshot_priors.engine.preflight`), so an offline machine gets one clear error naming the
flags to use instead, not a minute of retried downloads and a traceback.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["check_timm_download", "network_available", "timm_weights_cached"]

_TRUE = ("1", "true", "yes", "on")


def network_available(host: str | None = None, port: int = 443, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the Hub (``HF_ENDPOINT`` or huggingface.co) opens within ``timeout`` s.

    ``False`` at once when ``HF_HUB_OFFLINE`` is set. The name lookup runs in a thread so that
    a hanging resolver cannot hold the caller longer than ``timeout``.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return False
    if host is None:
        host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def timm_weights_cached(name: str) -> bool:
    """Whether timm's pretrained weights of model ``name`` are already on disk (HF or torch hub cache)."""
    try:
        from timm.models import get_pretrained_cfg

        pcfg = get_pretrained_cfg(name)
    except Exception:  # an unknown name: create_backbone reports it
        return True
    if pcfg is None:
        return False
    hub_id = getattr(pcfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        repo, _, revision = hub_id.partition("@")
        for filename in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(hit, str):
                return True
    url = getattr(pcfg, "url", None)
    if url:
        import torch

        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)).is_file()
    return False


def check_timm_download(name: str) -> None:
    """Refuse at once a download of timm's pretrained weights of ``name`` that cannot happen:
    not in the local cache, and no network (``HF_HUB_OFFLINE`` set, or the Hub unreachable
    within a couple of seconds) -- instead of timm's retry loop.

    Raises:
        OSError: naming the model and the flags to use instead (a local weights file).
    """
    if timm_weights_cached(name) or network_available():
        return
    why = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE else \
        "the Hugging Face Hub cannot be reached"
    raise OSError(f"pretrained weights (model.pretrained=true) need timm's ImageNet weights for {name!r}, which "
                  f"are not in the local cache, and {why}: pass a local copy with --set model.weights=PATH --set "
                  "model.pretrained=false (in Python: weights=PATH, pretrained=False; a timm .safetensors/.pth "
                  "state dict)")
