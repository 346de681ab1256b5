"""Benchmark harness: device choice, timing with peak memory, and the RESULTS.md writer.

Run ``python3 -m pytest benchmarks`` (CUDA when present, CPU otherwise). Every hot
path is timed side by side with a plain PFENet/MoCo-style reference
(``benchmarks/reference.py``) in the same run; each benchmark stores in
``benchmark.extra_info``:

* ``role``: ``"reference"`` or ``"library"`` (or ``"ceiling"`` for the bf16 matmul rate);
* ``peak_mem_mib``: peak *temporary* memory of one call, inputs excluded. On CUDA
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call;
  on CPU the peak resident-set growth of the process during one call (``VmHWM``
  after resetting it through ``/proc/self/clear_refs`` and ``malloc_trim``), which
  sees every allocation torch makes (tracemalloc does not);
* ``flops`` where meaningful, for TFLOP/s.

``--results-md PATH`` writes a Markdown table per group (median time, speed-up
over the group's reference, peak memory, TFLOP/s) with the device, date and
command. ``BENCH_THREADS`` sets the CPU intra-op threads (default 1, for stable
numbers on a shared machine).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import platform
import sys
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))


def pytest_addoption(parser):
    group = parser.getgroup("fewshot_priors benchmarks")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when available)")
    group.addoption("--results-md", default=None, help="write a Markdown summary to this path")


def pytest_configure(config):
    if not torch.cuda.is_available() or config.getoption("--bench-device") == "cpu":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    name = pytestconfig.getoption("--bench-device")
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda but no CUDA device")
    return torch.device(name)


def on_gpu(device: torch.device) -> bool:
    return device.type == "cuda"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- peak memory
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:  # pragma: no cover - non-glibc platform
            _LIBC = False
    return _LIBC


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - no procfs
        return None
    return None


def _reset_rss_peak() -> bool:
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:  # pragma: no cover - no procfs / not permitted
        return False


def peak_memory(fn, device: torch.device) -> tuple[float | None, str]:
    """Run ``fn`` once; return its peak temporary memory in MiB and how it was measured."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return peak / 2**20, "cuda max_memory_allocated - allocated before"
    if not _reset_rss_peak():
        fn()
        return None, "unavailable (no /proc/self/clear_refs)"
    base = _status_kib("VmRSS")
    out = fn()
    peak = _status_kib("VmHWM")
    del out
    if base is None or peak is None:
        return None, "unavailable"
    return max(peak - base, 0) / 1024, "CPU peak RSS growth (VmHWM after clear_refs)"


# ----------------------------------------------------------------------------- timing
def run_benchmark(
    benchmark,
    fn,
    device: torch.device,
    *,
    group: str,
    impl: str,
    role: str = "library",
    rounds: int | None = None,
    flops: float | None = None,
    measure_memory: bool = True,
    **extra,
):
    """Time ``fn`` (synchronised on CUDA) with pytest-benchmark and record peak memory.

    ``group`` gathers the implementations compared side by side; ``role="reference"``
    marks the plain implementation that the speed-ups are relative to.
    """

    def call():
        out = fn()
        sync(device)
        return out

    call()  # warm-up: autotuning, lazy init, allocator caches
    peak, how = peak_memory(call, device) if measure_memory else (None, "not measured")
    benchmark.group = group
    benchmark.extra_info.update(
        impl=impl,
        role=role,
        device=str(device),
        peak_mem_mib=None if peak is None else round(peak, 2),
        mem_method=how,
        **({"flops": flops} if flops else {}),
        **extra,
    )
    if rounds is None:
        rounds = 20 if device.type == "cuda" else 3
    return benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1 if measure_memory else 0)


# ----------------------------------------------------------------------------- RESULTS.md
# What the GPU groups measure and the targets they are read against (written into RESULTS.md
# while no GPU row is there).
GPU_TARGETS = [
    "Region maps, batch 8, C = 2048, 60x60, 1-shot and 5-shot: fused >= 10x faster than the "
    "PFENet-style fp32 reference (same run), temporary memory <= 64 MiB, >= 50 % of the bf16 "
    "matmul rate (same run) for the matmul part (groups `region maps ... [cuda]`; the `fused-guided` "
    "row is the K-shot path with the masks folded into the kernel, `library` goes through "
    "`guided_region_map`, which still makes B*K copies of the query and of the masked support).",
    "Region maps at C = 256 and the COCO size (batch 32, 81x81): speed-up and memory (same groups).",
    "Fused kernel accuracy at the real sizes: `tests/test_fused.py::test_real_sizes_on_gpu` "
    "(values within the derived per-position error bound, `cosine_error_bound`; the map within "
    "4E / (spread - 2E); the test prints both).",
    "The padded bf16 path vs the plain bf16 PyTorch version (`reference-bf16`: normalise in fp32, "
    "cast, bmm, amax; measured at 1.59 ms, 493 MiB at B=8 60x60 1-shot on an H100 with torch 2.11) and vs the direct "
    "kernel (`fused-direct`) at 60x60, 61x61, 81x81 (B=8 and B=32) and 119x119, 1- and 5-shot "
    "(groups `guided map sizes: ...`): the odd sizes must no longer fall off a cliff "
    "(the direct kernel: 163 ms at B=32 81x81 vs 23.8 ms at 80x80 on the same H100); `fused-padded-one-launch` shows what the "
    "64 MiB batch chunks cost in occupancy.",
    "QGNet training step and 1-shot / 5-shot inference at 473 with ResNet-50: >= 3x the "
    "episodes/s of the same model with reference region maps in fp32 (`test_bench_models.py`).",
    "GlobalLocalMoCo step: local loss <= 20 % over global-only (`test_bench_models.py`).",
    "Data loading keeps up: `data loading` episodes/s (default workers) >= the QGNet training "
    "step's episodes/s at batch 4 (`test_bench_data.py`, compare with `test_bench_models.py`).",
]
# The two floors (compute, memory traffic) of the headline region-map case, to judge the GPU rows against.
GPU_FLOORS = [
    "batch 8, 1-shot, C = 2048, 60x60: 2 * 8 * 3600^2 * 2048 = 425 GFLOP -> 0.55 ms at the "
    "measured ~772 TFLOP/s bf16 (an H100 SXM, a plain bf16 matmul); inputs read once: 2 x 236 MB fp32 -> ~0.15 ms at "
    "~3 TB/s. Compute-bound: floor ~0.55 ms (5-shot: ~2.8 ms); 10x over the ~10 ms reference "
    "needs <= 1 ms, i.e. >= 55 % of the bf16 rate.",
    "Measured before the padded path (H100, torch 2.11, triton 3.6): direct kernel 2.72 ms at "
    "B=8 60x60 1-shot, below the plain bf16 version's 1.59 ms. Prediction for the padded path: "
    "the normalise+pad pass reads each fp32 input twice and writes bf16 once (~2.5 x 236 MB "
    "-> ~0.2 ms for query + support at ~3 TB/s), the GEMM runs on wgmma with cp.async pipelining "
    "(checked offline: `test_padded_kernel_compiles_to_hopper_mma`) near the bf16 rate (~0.6 ms): "
    "~0.8-1.0 ms in one launch; the 64 MiB chunks (2 batch items per launch at C = 2048, 60x60) "
    "leave 60 of 132 SMs busy with 128-row tiles, so expect the chunked default to be slower than "
    "`fused-padded-one-launch`, which needs 2 x 126 MB of bf16 operands.",
]
# Appended verbatim to every RESULTS.md (profiles and open measurements written by hand).
NOTES_FILE = "NOTES.md"
GPU_COMMAND = "OUT=gpu_out bash benchmarks/gpu_run.sh   # on a CUDA machine; see the script for WHEELS and timings"


def _fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _cpu_desc() -> str:
    return (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads = {torch.get_num_threads()}"
    )


def device_label(device_str: str) -> str:
    """What a group ran on, from its rows' ``extra_info["device"]`` (``"cuda"``, ``"cuda:0"``, ``"cpu"``)."""
    if device_str.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device_str).index
        return f"{torch.cuda.get_device_name(index)} (CUDA {torch.version.cuda})"
    if device_str.startswith("cuda"):
        return f"{device_str} (not visible to the writer)"
    if device_str == "cpu":
        return _cpu_desc()
    return device_str


def gpu_unmeasured_lines() -> list[str]:
    """The RESULTS.md section of a run without GPU rows: what the GPU groups measure and how."""
    return [
        "## GPU figures still unmeasured",
        "",
        "This run had no GPU. What the GPU groups measure, with their targets (H100):",
        "",
        *[f"- {t}" for t in GPU_TARGETS],
        "",
        "Floors and predictions to compare the GPU numbers with:",
        "",
        *[f"- {t}" for t in GPU_FLOORS],
        "",
        "Measure on a CUDA machine with one script (GPU tests, then the benchmarks; each step under",
        "`timeout`, logs and the GPU RESULTS.md under `$OUT`):",
        "",
        "```",
        GPU_COMMAND,
        "```",
        "",
    ]


def load_note() -> str:
    """The machine's load average, and whether it was too busy for CPU timings to mean much."""
    load = os.getloadavg()
    text = f"load average at the end (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in load)}"
    if max(load) > 0.5 * (os.cpu_count() or 1):
        text += (" -- the machine was busy with other processes: CPU times and ratios of this run are not "
                 "representative; rerun on an idle machine")
    return text


# Rows whose median the other rows of a group are compared with: role -> column heading.
REFERENCE_ROLES = {"reference": "speed-up", "reference-bf16": "vs bf16 ref"}


def write_results(path: Path, benchmarks, config) -> None:
    rows = [b for b in benchmarks if getattr(b, "stats", None) is not None]
    devices = sorted({b.extra_info.get("device", "unknown") for b in rows})
    gpu_run = any(d.startswith("cuda") for d in devices)
    device_desc = "; ".join(device_label(d) for d in devices) if devices else "no rows"
    try:
        import triton

        triton_v = triton.__version__
    except Exception:  # pragma: no cover
        triton_v = "not installed"
    cmd = "python3 -m pytest " + " ".join(config.invocation_params.args)
    lines = [
        "# Benchmark results",
        "",
        f"- devices: {device_desc} (each group below names its own)",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{cmd}`",
        f"- torch {torch.__version__}, triton {triton_v}, python {platform.python_version()}",
        f"- {load_note()}",
        "- time: median over the rounds; speed-up: reference median / median, same run (`vs bf16 ref`:",
        "  over the plain bf16 PyTorch version, `reference-bf16`, where the group has one);",
        "  peak memory: temporaries of one call, inputs excluded "
        f"({'; '.join(sorted({str(b.extra_info.get('mem_method')) for b in rows if b.extra_info.get('peak_mem_mib') is not None})) or 'n/a'}).",
        "",
    ]
    groups: dict[str, list] = {}
    for b in rows:
        groups.setdefault(b.group or b.name, []).append(b)
    for group, items in groups.items():
        refs = {
            role: next((b for b in items if b.extra_info.get("role") == role), None) for role in REFERENCE_ROLES
        }
        refs = {role: b for role, b in refs.items() if b is not None}
        ceiling = next((b for b in items if b.extra_info.get("role") == "ceiling"), None)
        group_devices = sorted({b.extra_info.get("device", "unknown") for b in items})
        heads = [REFERENCE_ROLES[r] for r in refs] or ["speed-up"]
        lines += [f"## {group}", "", f"device: {'; '.join(device_label(d) for d in group_devices)}", ""]
        lines += ["| implementation | role | median ms | " + " | ".join(heads) + " | peak MiB | TFLOP/s | notes |"]
        lines += ["|---|---|---:|" + "---:|" * len(heads) + "---:|---:|---|"]
        for b in items:
            info = b.extra_info
            med = b.stats.median
            speeds = [f"{ref.stats.median / med:.2f}x" if med > 0 else "" for ref in refs.values()] or [""]
            mem = info.get("peak_mem_mib")
            flops = info.get("flops")
            tf = f"{flops / med / 1e12:.2f}" if flops and med > 0 else ""
            if flops and ceiling is not None and b is not ceiling and info.get("role") not in REFERENCE_ROLES:
                rate = flops / med / (ceiling.extra_info["flops"] / ceiling.stats.median)
                tf += f" ({rate:.0%} of bf16 matmul)"
            notes = info.get("notes", "")
            if info.get("episodes") and med > 0:
                notes = f"{info['episodes'] / med:.2f} episodes/s" + (f"; {notes}" if notes else "")
            lines.append(
                f"| {info.get('impl', b.name)} | {info.get('role', '')} | {_fmt_ms(med)} | {' | '.join(speeds)} | "
                f"{'' if mem is None else f'{mem:.1f}'} | {tf} | {notes} |"
            )
        lines.append("")
    if not gpu_run:
        lines += gpu_unmeasured_lines()
    notes = _HERE / NOTES_FILE
    if notes.is_file():  # hand-written sections (CPU profiles, what is left): kept across rewrites
        lines += ["", notes.read_text().rstrip(), ""]
    path.write_text("\n".join(lines))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    target = session.config.getoption("--results-md")
    bs = getattr(session.config, "_benchmarksession", None)
    if not target or bs is None:
        return
    write_results(Path(target), bs.benchmarks, session.config)
