"""Export a trained QGNet for inference: ONNX (onnxruntime, TensorRT, ...) or TorchScript.

The exported graph is the model's inference path with fixed shapes: one query ``1, 3, S, S``,
``K`` supports ``1, K, 3, S, S`` and their masks ``1, K, S, S`` (float, 1 = foreground;
255 = ignore is cleaned to 0 inside the graph, as :meth:`QGNet.forward` does), returning the
logits ``1, 2, S, S``. Inputs are the test canvases of :class:`~fewshot_priors.data.TestTransform`
(RGB in [0, 1]; each backbone's normalisation is inside the graph), and the logits map back to
the original size with :func:`~fewshot_priors.data.restore_prediction`, as in
:class:`~fewshot_priors.engine.predict.Predictor`. The region maps run their plain PyTorch
path (``region_map_backend="reference"``, the same values as every other backend), and the
input value checks are left out (they read values, which a traced graph cannot).

:func:`export_model` writes the file and checks it: it runs the exported model on the example
inputs and compares its logits with the PyTorch model's (ONNX: with onnxruntime on the CPU,
when it is installed).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .._validate import is_int

__all__ = ["EXPORT_FORMATS", "InferenceGraph", "example_inputs", "export_model", "run_exported"]

#: The export formats: ``--format`` of ``fewshot-priors export``.
EXPORT_FORMATS = ("onnx", "torchscript")
#: ONNX opset of the exported graphs.
ONNX_OPSET = 18
_INPUTS = ("query_image", "support_images", "support_masks")


class InferenceGraph(nn.Module):
    """A QGNet's inference path as one ``(query_image, support_images, support_masks) -> logits``
    module (a copy: the model itself is not changed), in eval mode, with the plain region-map
    backend and no value checks.

    Shape:
        - query_image: ``B, 3, S, S`` RGB in [0, 1].
        - support_images: ``B, K, 3, S, S``; support_masks: ``B, K, S, S`` (1 = foreground).
        - output: ``B, 2, S, S`` logits.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for part in (getattr(self.model, "guided_map", None), getattr(self.model, "prior_map", None)):
            if part is not None and hasattr(part, "backend"):
                part.backend = "reference"
        self.eval()  # the wrapper too: the exporters trace the mode they find (dropout would be kept)

    def forward(self, query_image: torch.Tensor, support_images: torch.Tensor,
                support_masks: torch.Tensor) -> torch.Tensor:
        return self.model(query_image, support_images, support_masks, check_inputs=False)["logits"]


def example_inputs(image_size: int, shots: int = 1, *, seed: int = 0,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs of the exported shapes: a query, ``shots`` supports and their 0/1 masks
    (a rectangle each, so that every support has foreground).

    Example:
        >>> q, s, m = example_inputs(64, shots=2)
        >>> tuple(q.shape), tuple(s.shape), tuple(m.shape)
        ((1, 3, 64, 64), (1, 2, 3, 64, 64), (1, 2, 64, 64))
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(1, 3, image_size, image_size, generator=g)
    s = torch.rand(1, shots, 3, image_size, image_size, generator=g)
    m = torch.zeros(1, shots, image_size, image_size)
    lo, hi = image_size // 4, 3 * image_size // 4
    m[..., lo:hi, lo:hi] = 1.0
    return q.to(device), s.to(device), m.to(device)


def _write(graph: InferenceGraph, inputs: tuple[torch.Tensor, ...], path: Path, fmt: str) -> None:
    """Trace ``graph`` on ``inputs`` into ``path``: TorchScript, or ONNX with the ``torch.export``
    based exporter (the TorchScript-based one loses the static sizes behind timm's "same" padding
    and cannot export the decoder's adaptive pooling then)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporters' notes
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(graph, inputs, check_trace=False), str(path))
        else:
            torch.onnx.export(graph, inputs, str(path), input_names=list(_INPUTS), output_names=["logits"],
                              opset_version=ONNX_OPSET, dynamo=True, verbose=False)


def run_exported(path: str | os.PathLike, query_image: torch.Tensor, support_images: torch.Tensor,
                 support_masks: torch.Tensor) -> torch.Tensor:
    """Run an exported file (``.onnx`` with onnxruntime on the CPU, else TorchScript) on CPU
    tensors; returns its logits as a tensor.

    Raises:
        ImportError: an ONNX file without onnxruntime installed.
    """
    path = Path(path)
    inputs = (query_image, support_images, support_masks)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {name: t.detach().cpu().float().numpy() for name, t in zip(_INPUTS, inputs)}
        return torch.from_numpy(session.run(["logits"], feed)[0])
    with warnings.catch_warnings():  # TorchScript's deprecation notice: the format is what was asked for
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(*(t.detach().cpu().float() for t in inputs))


@torch.no_grad()
def export_model(model: nn.Module, path: str | os.PathLike, *, fmt: str = "onnx", image_size: int = 473,
                 shots: int = 1) -> dict:
    """Export ``model`` (a trained QGNet) to ``path`` and check the file.

    Args:
        model: the model (copied to the CPU in float32; not changed).
        path: the file to write (``.onnx`` / ``.pt``); its folder is created.
        fmt: ``"onnx"`` or ``"torchscript"``.
        image_size: ``S``, the square input side (the model's ``data.image_size``).
        shots: ``K``, the number of supports the graph takes.

    Returns:
        ``{"path", "format", "image_size", "shots", "max_abs_diff"}``: ``max_abs_diff`` is the
        largest difference between the exported and the PyTorch logits on random inputs
        (``None`` for ONNX without onnxruntime installed).

    Raises:
        ValueError: an unknown ``fmt`` or a bad size / shot count.
        ImportError: ONNX without onnxscript (torch's ONNX exporter needs it) installed.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"`fmt` must be one of {EXPORT_FORMATS}, got {fmt!r}")
    for name, value, low in (("image_size", image_size, 8), ("shots", shots, 1)):
        if not is_int(value) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    if fmt == "onnx" and importlib.util.find_spec("onnxscript") is None:
        raise ImportError("ONNX export needs onnx and onnxscript (torch's exporter): pip install onnx onnxscript, "
                          "and onnxruntime to check the file")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = InferenceGraph(model).cpu().float()  # a copy: the model stays where it is
    inputs = example_inputs(image_size, shots)
    _write(graph, inputs, path, fmt)
    reference = graph(*inputs)
    try:
        exported = run_exported(path, *inputs)
        diff = float((exported - reference).abs().max())
    except ImportError:
        diff = None
    return {"path": str(path), "format": fmt, "image_size": image_size, "shots": shots, "max_abs_diff": diff}
