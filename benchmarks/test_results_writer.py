"""The RESULTS.md writer labels each group with the device its rows ran on (no timing here)."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import write_results


def _row(group, impl, role, device, median):
    return SimpleNamespace(
        group=group, name=impl, stats=SimpleNamespace(median=median),
        extra_info={"impl": impl, "role": role, "device": device, "peak_mem_mib": 1.0, "mem_method": "m"},
    )  # fmt: skip


def test_each_group_names_its_own_device(tmp_path, pytestconfig):
    rows = [
        _row("data loading [cpu]", "loader", "reference", "cpu", 1.0),  # first row: a CPU group
        _row("region maps [cuda]", "pfenet", "reference", "cuda", 0.010),
        _row("region maps [cuda]", "bf16", "reference-bf16", "cuda", 0.002),
        _row("region maps [cuda]", "fused", "library", "cuda", 0.001),
    ]
    out = tmp_path / "RESULTS.md"
    write_results(out, rows, pytestconfig)
    text = out.read_text()
    cpu_part, gpu_part = text.split("## data loading [cpu]")[1].split("## region maps [cuda]")
    cpu_label = cpu_part.strip().splitlines()[0]
    gpu_label = gpu_part.strip().splitlines()[0]
    assert cpu_label.startswith("device: CPU"), cpu_label
    assert gpu_label.startswith("device: ") and "CPU" not in gpu_label, gpu_label
    assert "CUDA" in gpu_label or "cuda" in gpu_label, gpu_label
    # two reference columns in the GPU group: 10x over PFENet, 2x over the bf16 version
    fused_line = next(line for line in gpu_part.splitlines() if line.startswith("| fused |"))
    assert "| 10.00x | 2.00x |" in fused_line
    assert "vs bf16 ref" in gpu_part
