"""Speed and memory of the contrastive kernels (`common.kernels`) against eager PyTorch, compile and peers.

    python -m benchmarks.kernels [--quick] [--device cpu|cuda] [--n 4096 8192] [--d 64 128]
                                 [--variants plain clip ...] [--providers chunked eager ...]

One run puts side by side, on the same inputs and dtype: this repo's op (`ours`: Triton on CUDA; on the CPU
it resolves to `chunked`), eager PyTorch (materialised logits; CLIP through open_clip's ClipLoss),
torch.compile of eager (compile time excluded), the exact chunked fallback, and the optional peers Inf-CL,
Cut Cross-Entropy (exact mode), pytorch-metric-learning (small N) and a chunked matmul + torch.topk loop.
Every measured (provider, cell) first re-checks its result at a small N against a float64 materialised
reference and is reported as FAIL, not timed, when it is wrong.

CPU: each (provider, cell) runs in a fresh forked process; time is the perf_counter median; memory is the peak
resident set (VmHWM, the per-process value behind ru_maxrss, reset after the inputs are built) minus the
resident set at that point. CUDA: triton.testing.do_bench with providers interleaved; memory is
max_memory_allocated minus the allocation after the inputs are built.

Writes benchmarks/results/kernels_<device>.md and .csv (or --out DIR).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import dataclasses
import datetime
import gc
import importlib
import importlib.util
import math
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
TEMPERATURE = 0.07
NUM_CLASSES = 100  # masking variant: labels drawn from 100 classes (~1% of keys share a query's label)
HCL_BETA = 1.0
DCL_TAU_PLUS = 0.1
GOAL_N, GOAL_D = 16384, 128
GOAL_MEMORY_MB = 300.0
GOAL_TIME_RATIO = 1.5
# The CUDA goals, judged at N = M = 32768, d = 256, bfloat16 (cuda_goal_rows).
CUDA_GOAL_N, CUDA_GOAL_D = 32768, 256
CUDA_GOAL_MEMORY_MB = 128.0
CUDA_GOAL_MEMORY_VS_EAGER = 75.0
CUDA_GOAL_PLAIN_MS = 4.5  # H100: about half of peak bf16 matmul throughput at 8 N^2 d FLOP
CUDA_GOAL_SPEEDUP = {"eager": 3.0, "compile": 1.5, "inf_cl": 1.0, "cce": 1.0}
CUDA_GOAL_VS_PLAIN = {"clip": 1.3, "hcl": 1.35, "masking": 1.15, "dcl": 1.15}
CUDA_GOAL_TOPK_VS_FORWARD = 1.5
CUDA_LARGEST = ("clip", 131072, 768)  # must run on one 80 GB GPU
NOT_APPLICABLE = "—"


# ---------------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One benchmarked op: an info_nce configuration (forward+backward) or top-k mining (forward)."""

    name: str
    op: str  # "loss" or "topk"
    options: dict[str, Any] = field(default_factory=dict)  # info_nce keyword arguments
    labels: bool = False
    k: int = 0


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("plain", "loss"),
        Variant("clip", "loss", {"symmetric": True}),
        Variant("masking", "loss", labels=True),
        Variant("hcl", "loss", {"hard_negative_beta": HCL_BETA}),
        Variant("dcl", "loss", {"debias_tau_plus": DCL_TAU_PLUS}),
        Variant("plain_fwd", "forward"),  # the fused forward alone: the yardstick of the top-k goal
        Variant("topk1", "topk", k=1),
        Variant("topk16", "topk", k=16),
        Variant("topk64", "topk", k=64),
    )
}


@dataclass
class Inputs:
    """Unit-norm query/key rows (key i is a noisy view of query i), labels, and the excluded key per row."""

    query: torch.Tensor
    key: torch.Tensor
    query_labels: torch.Tensor | None
    key_labels: torch.Tensor | None
    exclude_index: torch.Tensor


def make_inputs(variant: Variant, n: int, d: int, dtype: torch.dtype, device: str, seed: int = 0) -> Inputs:
    """Seeded inputs of one cell; generated in float32 on the CPU so every device sees the same values."""
    gen = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    key = F.normalize(query + F.normalize(torch.randn(n, d, generator=gen), dim=1), dim=1)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen) if variant.labels else None
    needs_grad = variant.op == "loss"
    return Inputs(
        query=query.to(device, dtype).requires_grad_(needs_grad),
        key=key.to(device, dtype).requires_grad_(needs_grad),
        query_labels=None if labels is None else labels.to(device),
        key_labels=None if labels is None else labels.to(device),  # key i is a view of query i
        exclude_index=torch.arange(n, device=device),
    )


# --------------------------------------------------------------------------------------------- providers

# A provider builds, once per process, a function of the inputs: for "loss" variants it returns the scalar
# loss (the harness runs backward), for "topk" variants (values, indices) of the k most similar keys.
OpFn = Callable[[Inputs], Any]


@dataclass(frozen=True)
class Provider:
    """An implementation to time. `build(variant)` returns the op; `unavailable(device)` a reason or None."""

    name: str
    build: Callable[[Variant], OpFn]
    variants: tuple[str, ...]
    description: str
    unavailable: Callable[[str], str | None] = lambda device: None
    max_n: int | None = None
    # Rough peak bytes at (N, M, variant), to skip cells that cannot fit (None: never materialises N x M).
    peak_bytes: Callable[[int, int, str], float] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    # Run once at the cell's size before measuring (torch.compile may specialise and recompile there).
    warmup_at_size: bool = False


# Measured peaks of eager per N x M entry (fp32, CPU) with a margin: the guard must not skip what fits.
EAGER_BYTES_PER_ENTRY = {"plain": 14.0, "clip": 17.0, "masking": 14.0, "hcl": 22.0, "dcl": 14.0}
EAGER_BYTES_PER_ENTRY |= {name: 6.0 for name in ("plain_fwd", "topk1", "topk16", "topk64")}

LOSS_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.op == "loss")
FORWARD_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.op == "forward")
TOPK_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.op == "topk")


def _ours(backend: str) -> Callable[[Variant], OpFn]:
    from common.kernels import info_nce, topk_similar

    def build(variant: Variant) -> OpFn:
        if variant.op == "topk":
            return lambda x: topk_similar(
                x.query, x.key, variant.k, exclude_index=x.exclude_index, backend=backend
            )
        return lambda x: info_nce(
            x.query,
            x.key,
            TEMPERATURE,
            query_labels=x.query_labels,
            key_labels=x.key_labels,
            backend=backend,
            **variant.options,
        )

    return build


def _eager_loss(variant: Variant) -> Callable[..., torch.Tensor]:
    """Materialised PyTorch as users write it: logits + cross entropy; HCL/DCL as in the papers' code."""
    inv_t = 1.0 / TEMPERATURE
    name = "plain" if variant.op == "forward" else variant.name
    if name == "clip":
        from open_clip.loss import ClipLoss

        clip_loss = ClipLoss()
        scale = torch.tensor(inv_t)
        return lambda q, k, ql, kl: clip_loss(q, k, scale.to(q.device))
    if name == "plain":
        return lambda q, k, ql, kl: F.cross_entropy(
            q @ k.T * inv_t, torch.arange(q.shape[0], device=q.device)
        )
    if name == "masking":

        def masked(q: torch.Tensor, k: torch.Tensor, ql: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
            same = ql[:, None] == kl[None, :]
            same.fill_diagonal_(False)  # the positive stays
            logits = (q @ k.T * inv_t).masked_fill(same, -math.inf)
            return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))

        return masked
    beta = float(variant.options.get("hard_negative_beta", 0.0))
    tau_plus = float(variant.options.get("debias_tau_plus", 0.0))

    def hcl_dcl(q: torch.Tensor, k: torch.Tensor, ql: Any, kl: Any) -> torch.Tensor:
        # Robinson et al. (HCL) / Chuang et al. (DCL) code: exp domain, the positive masked out.
        # The positive is masked out, not subtracted from the row sums: it dominates them (cancellation).
        n = k.shape[0] - 1
        logits = q @ k.T * inv_t
        pos = torch.exp(logits.diagonal())
        eye = torch.eye(q.shape[0], k.shape[0], dtype=torch.bool, device=q.device)
        neg_logits = logits.masked_fill(eye, -math.inf)
        neg = torch.exp(neg_logits)
        if beta > 0:
            imp = torch.exp(beta * neg_logits)
            neg_sum = (imp * neg).sum(1) / (imp.sum(1) / n)
        else:
            neg_sum = neg.sum(1)
        if tau_plus > 0:
            neg_sum = torch.clamp((neg_sum - tau_plus * n * pos) / (1.0 - tau_plus), min=n * math.exp(-inv_t))
        return torch.log1p(neg_sum / pos).mean()  # -log(pos / (pos + neg_sum)), without cancellation

    return hcl_dcl


def _eager_topk(variant: Variant) -> Callable[..., Any]:
    def topk(q: torch.Tensor, k: torch.Tensor, exclude: torch.Tensor) -> Any:
        sims = (q @ k.T).float()
        sims[torch.arange(q.shape[0], device=q.device), exclude] = -math.inf
        return torch.topk(sims, variant.k, dim=1)

    return topk


def _eager(compiled: bool) -> Callable[[Variant], OpFn]:
    def build(variant: Variant) -> OpFn:
        if variant.op == "topk":
            fn = _eager_topk(variant)
            if compiled:
                fn = torch.compile(fn, dynamic=True)
            return lambda x: fn(x.query, x.key, x.exclude_index)
        fn = _eager_loss(variant)
        if compiled:
            fn = torch.compile(fn, dynamic=True)
        return lambda x: fn(x.query, x.key, x.query_labels, x.key_labels)

    return build


def _matmul_topk(variant: Variant) -> OpFn:
    """Chunked matmul + torch.topk: the user-level loop over query row blocks (block x M at a time)."""
    block = 1024

    def run(x: Inputs) -> Any:
        values, indices = [], []
        for start in range(0, x.query.shape[0], block):
            rows = torch.arange(start, min(start + block, x.query.shape[0]), device=x.query.device)
            sims = (x.query[rows] @ x.key.T).float()
            sims[torch.arange(rows.numel(), device=rows.device), x.exclude_index[rows]] = -math.inf
            top = torch.topk(sims, variant.k, dim=1)
            values.append(top.values)
            indices.append(top.indices)
        return torch.cat(values), torch.cat(indices)

    return run


def _pml(variant: Variant) -> OpFn:
    """pytorch-metric-learning NTXentLoss, query rows as anchors against key rows (label i <-> key i)."""
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import NTXentLoss

    loss = NTXentLoss(temperature=TEMPERATURE, distance=DotProductSimilarity(normalize_embeddings=False))

    def run(x: Inputs) -> torch.Tensor:
        ids = torch.arange(x.query.shape[0], device=x.query.device)
        # A distinct ref_labels tensor: PML drops the diagonal pairs when `ref_labels is labels`.
        return loss(x.query, ids, ref_emb=x.key, ref_labels=ids.clone())

    return run


def _inf_cl(variant: Variant) -> OpFn:
    """Inf-CL (`inf_cl.cal_inf_loss`): scale multiplies the query; CLIP averages both directions."""
    from inf_cl import cal_inf_loss

    scale = 1.0 / TEMPERATURE

    def run(x: Inputs) -> torch.Tensor:
        d = x.query.shape[1]
        head_dim = next(h for h in (256, 128, 64, 32, 16) if d % h == 0)
        loss = cal_inf_loss(x.query, x.key, scale=scale, head_dim=head_dim)
        if variant.name == "clip":
            loss = 0.5 * (loss + cal_inf_loss(x.key, x.query, scale=scale, head_dim=head_dim))
        return loss

    return run


def _cce(variant: Variant) -> OpFn:
    """Apple's Cut Cross-Entropy, exact mode: logits (query / T) @ key.T never materialised."""
    from cut_cross_entropy import linear_cross_entropy

    inv_t = 1.0 / TEMPERATURE

    def run(x: Inputs) -> torch.Tensor:
        ids = torch.arange(x.query.shape[0], device=x.query.device)
        loss = linear_cross_entropy(x.query * inv_t, x.key, ids, impl="cce_exact")
        if variant.name == "clip":
            loss = 0.5 * (loss + linear_cross_entropy(x.key * inv_t, x.query, ids, impl="cce_exact"))
        return loss

    return run


def _needs(module: str, cuda_only: bool) -> Callable[[str], str | None]:
    def unavailable(device: str) -> str | None:
        missing = importlib.util.find_spec(module) is None
        if missing and cuda_only and device != "cuda":
            return "n/a (not installed; needs CUDA)"
        if missing:
            return "n/a (not installed; pip install -e '.[bench]')"
        if cuda_only and device != "cuda":
            return "n/a (needs CUDA)"
        return None

    return unavailable


def _ours_unavailable(device: str) -> str | None:
    return None if device == "cuda" else "= chunked on CPU (backend='auto' resolves to it)"


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            "ours",
            lambda v: _ours("auto")(v),
            LOSS_VARIANTS + FORWARD_VARIANTS + TOPK_VARIANTS,
            "common.kernels op, backend='auto' (Triton on CUDA)",
            unavailable=_ours_unavailable,
        ),
        Provider(
            "chunked",
            lambda v: _ours("chunked")(v),
            LOSS_VARIANTS + FORWARD_VARIANTS + TOPK_VARIANTS,
            "common.kernels op, backend='chunked' (exact PyTorch, no N x M matrix)",
        ),
        Provider(
            "eager",
            _eager(compiled=False),
            LOSS_VARIANTS + FORWARD_VARIANTS + TOPK_VARIANTS,
            "materialised logits + F.cross_entropy (CLIP: open_clip ClipLoss; HCL/DCL: the papers' code); "
            "top-k: q @ k.T + torch.topk",
            peak_bytes=lambda n, m, v: EAGER_BYTES_PER_ENTRY.get(v, 24.0) * n * m,
        ),
        Provider(
            "compile",
            _eager(compiled=True),
            LOSS_VARIANTS + FORWARD_VARIANTS + TOPK_VARIANTS,
            "torch.compile(eager, dynamic=True); compile time excluded",
            peak_bytes=lambda n, m, v: 16.0 * n * m,
            warmup_at_size=True,
        ),
        Provider(
            "pml",
            _pml,
            ("plain",),
            "pytorch-metric-learning NTXentLoss (dot-product similarity); its positive-pairs x negatives "
            "matrix is O(N^3), so small N only",
            unavailable=_needs("pytorch_metric_learning", cuda_only=False),
            max_n=1024,
            peak_bytes=lambda n, m, v: 16.0 * n * n * m,
        ),
        Provider(
            "inf_cl",
            _inf_cl,
            ("plain", "clip"),
            "Inf-CL cal_inf_loss (pip inf-cl; Triton, CUDA only)",
            unavailable=_needs("inf_cl", cuda_only=True),
        ),
        Provider(
            "cce",
            _cce,
            ("plain", "clip"),
            "Cut Cross-Entropy linear_cross_entropy(impl='cce_exact') (pip cut-cross-entropy; CUDA only)",
            unavailable=_needs("cut_cross_entropy", cuda_only=True),
        ),
        Provider(
            "matmul_topk",
            lambda v: _matmul_topk(v),
            TOPK_VARIANTS,
            "chunked matmul + torch.topk over 1024-row query blocks",
        ),
    )
}


def load_provider(spec: str) -> Provider:
    """A built-in provider name, or 'package.module:attribute' naming a Provider (plug-ins, tests)."""
    if spec in PROVIDERS:
        return PROVIDERS[spec]
    if ":" not in spec:
        raise SystemExit(f"unknown provider {spec!r}; use one of {sorted(PROVIDERS)} or module:attribute")
    module, attr = spec.split(":", 1)
    provider = getattr(importlib.import_module(module), attr)
    # Duck-typed: under `python -m` this module is __main__, so its Provider class differs from the plug-in's.
    if not all(hasattr(provider, f.name) for f in dataclasses.fields(Provider)):
        raise SystemExit(f"{spec} is a {type(provider).__name__}, not a benchmarks.kernels.Provider")
    return provider


# ------------------------------------------------------------------------------------------- correctness


def reference_output(variant: Variant, x: Inputs) -> tuple[torch.Tensor, ...]:
    """Float64 materialised ground truth on the inputs as rounded to their dtype."""
    from common.kernels.reference import info_nce_reference, topk_similar_reference

    q = x.query.detach().double().cpu().requires_grad_(variant.op == "loss")
    k = x.key.detach().double().cpu().requires_grad_(variant.op == "loss")
    ql = None if x.query_labels is None else x.query_labels.cpu()
    kl = None if x.key_labels is None else x.key_labels.cpu()
    if variant.op == "topk":
        return topk_similar_reference(q, k, variant.k, exclude_index=x.exclude_index.cpu())
    loss = info_nce_reference(q, k, TEMPERATURE, query_labels=ql, key_labels=kl, **variant.options)
    if variant.op == "forward":
        return (loss.detach(),)
    loss.backward()
    return loss.detach(), q.grad, k.grad


def run_op(fn: OpFn, variant: Variant, x: Inputs) -> tuple[torch.Tensor, ...]:
    """One call: forward (+ backward for losses).

    Returns (loss, dquery, dkey) for losses, (loss,) for forward-only variants, else (values, indices).
    """
    if variant.op == "topk":
        with torch.no_grad():
            values, indices = fn(x)
        return values, indices
    if variant.op == "forward":
        with torch.no_grad():
            return (fn(x).detach(),)
    x.query.grad = None
    x.key.grad = None
    loss = fn(x)
    loss.backward()
    return loss.detach(), x.query.grad, x.key.grad


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / (|e| + max |e|) in float64 (inf when shapes differ or values are not finite)."""
    if actual is None or actual.shape != expected.shape:
        return math.inf
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not torch.isfinite(actual).all():
        return math.inf
    scale = expected.abs().max().clamp_min(1e-30)
    return float(((actual - expected).abs() / (expected.abs() + scale)).max())


def check_error(variant: Variant, x: Inputs, out: tuple[torch.Tensor, ...]) -> float:
    """Largest relative error of the outputs against the float64 reference."""
    expected = reference_output(variant, x)
    if variant.op in ("loss", "forward"):
        return max(relative_error(a, e) for a, e in zip(out, expected, strict=True))
    values, indices = out
    err = relative_error(values, expected[0])
    if indices.shape != expected[1].shape:
        return math.inf
    # Ties may pick other keys: check that the returned keys score the returned values and are allowed.
    idx = indices.cpu()
    rescored = (x.query.detach().double().cpu()[:, None, :] * x.key.detach().double().cpu()[idx]).sum(-1)
    err = max(err, relative_error(values, rescored))
    if (idx == x.exclude_index.cpu()[:, None]).any() or (idx.sort(1).values.diff(dim=1) == 0).any():
        return math.inf
    return err


def tolerance(dtype: torch.dtype) -> float:
    return 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2


# ---------------------------------------------------------------------------------------------- measuring


def _proc_status_kb(name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc), so they cannot hide new allocations from the RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


def measure_cpu_memory(call: Callable[[], Any]) -> tuple[Any, float, float, str]:
    """Run `call` once; returns its result, seconds, extra peak resident memory in MB, and the method."""
    _release_freed_memory()
    if _reset_peak_rss():
        baseline = _proc_status_kb("VmRSS") or 0
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        peak = _proc_status_kb("VmHWM") or 0
        return result, seconds, (peak - baseline) / 1024, "VmHWM reset"
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result, seconds, (peak - baseline) / 1024, "ru_maxrss"


def quantiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """Median, p20 and p80 (linear interpolation; all equal for one sample)."""
    ordered = sorted(samples)

    def q(p: float) -> float:
        pos = p * (len(ordered) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return statistics.median(ordered), q(0.2), q(0.8)


@dataclass
class Cell:
    """One (variant, N, d) of the grid."""

    variant: str
    n: int
    d: int

    @property
    def is_goal(self) -> bool:
        return self.n == GOAL_N and self.d == GOAL_D


@dataclass
class Result:
    """One (provider, cell): status ok / FAIL / skip / n/a / error, with times in ms and memory in MB."""

    variant: str
    n: int
    d: int
    provider: str
    status: str
    reason: str = ""
    check_error: float | None = None
    time_median_ms: float | None = None
    time_p20_ms: float | None = None
    time_p80_ms: float | None = None
    repeats: int = 0
    mem_extra_mb: float | None = None
    mem_method: str = ""
    load1: float | None = None
    wall_s: float | None = None


def _unavailable_reason(provider: Provider, variant: str, n: int, device: str) -> str | None:
    if variant not in provider.variants:
        return NOT_APPLICABLE
    if device not in provider.devices:
        return f"n/a (no {device} support)"
    reason = provider.unavailable(device)
    if reason:
        return reason
    if provider.max_n is not None and n > provider.max_n:
        return f"skip: small-N peer (N <= {provider.max_n})"
    return None


def measure_cpu_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Body of one CPU subprocess; an exception is reported as status 'error' with its message."""
    try:
        return _measure_cpu_cell(spec)
    except Exception as exc:  # a peer library failing is a result, not a crash of the benchmark
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:200]}


def _measure_cpu_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Check at small N, then memory and time at the cell's size."""
    torch.set_flush_denormal(True)  # as in every training run (common.experiment.configure_runtime)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    provider = load_provider(spec["provider"])
    variant = VARIANTS[spec["variant"]]
    dtype = getattr(torch, spec["dtype"])
    fn = provider.build(variant)
    small = make_inputs(variant, spec["check_n"], spec["d"], dtype, "cpu", seed=1)
    err = check_error(variant, small, run_op(fn, variant, small))
    out: dict[str, Any] = {"check_error": err}
    if not err <= tolerance(dtype):
        return out | {"status": "FAIL", "reason": f"wrong at N={spec['check_n']}: rel. error {err:.2g}"}
    # A second small size: torch.compile's dynamic graph is settled before anything is measured.
    run_op(fn, variant, make_inputs(variant, 2 * spec["check_n"], spec["d"], dtype, "cpu", seed=2))
    del small
    x = make_inputs(variant, spec["n"], spec["d"], dtype, "cpu")
    if provider.warmup_at_size:
        run_op(fn, variant, x)
    _, first_s, mem_mb, method = measure_cpu_memory(lambda: run_op(fn, variant, x))
    # The first call carries one-time costs; it counts as a sample only when they are negligible.
    samples = [first_s] if first_s >= 1.0 else []
    while len(samples) < spec["max_repeats"]:
        expected = statistics.median(samples) if samples else first_s
        if len(samples) >= spec["min_repeats"] and sum(samples) + expected > spec["budget_s"]:
            break
        start = time.perf_counter()
        run_op(fn, variant, x)
        samples.append(time.perf_counter() - start)
    med, p20, p80 = quantiles(samples)
    return out | {
        "status": "ok",
        "time_median_ms": med * 1e3,
        "time_p20_ms": p20 * 1e3,
        "time_p80_ms": p80 * 1e3,
        "repeats": len(samples),
        "mem_extra_mb": mem_mb,
        "mem_method": method,
    }


def _mem_available_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return math.inf


def _feasibility(
    provider: Provider, cell: Cell, device: str, history: dict[tuple[str, str, int], tuple[int, float]], args
) -> str | None:
    """A skip reason when the cell would not fit in memory or would take longer than --max-seconds."""
    entries = cell.n * cell.n
    if provider.peak_bytes is not None:
        need = provider.peak_bytes(cell.n, cell.n, cell.variant)
        free = _mem_available_bytes() if device == "cpu" else _cuda_free_bytes()
        if need > 0.75 * free:
            return f"skip: needs ~{need / 2**30:.1f} GB, {free / 2**30:.1f} GB free"
    seen = history.get((provider.name, cell.variant, cell.d))
    if seen and not cell.is_goal:
        predicted = seen[1] * entries / seen[0]
        if predicted > args.max_seconds:
            return f"skip: ~{predicted:.0f} s per call > {args.max_seconds:.0f} s limit"
    return None


def run_cpu(cells: list[Cell], providers: list[str], args, results: list[Result]) -> list[Result]:
    """Each (cell, provider) in a fresh forked process; small cells first: they predict large ones.

    Appends to `results` as it goes, so an interrupted run still reports what it measured."""
    history: dict[tuple[str, str, int], tuple[int, float]] = {}
    total = len(cells) * len(providers)
    done = 0
    for cell in sorted(cells, key=lambda c: (c.n * c.n * c.d, c.variant)):
        for name in providers:
            done += 1
            provider = load_provider(name)
            base = {"variant": cell.variant, "n": cell.n, "d": cell.d, "provider": provider.name}
            reason = _unavailable_reason(provider, cell.variant, cell.n, "cpu")
            reason = reason or _feasibility(provider, cell, "cpu", history, args)
            if reason:
                status = "n/a" if reason == NOT_APPLICABLE or reason.startswith("n/a") else "skip"
                results.append(Result(**base, status=status, reason=reason))
                if status == "skip":
                    print(f"[{done}/{total}] {_progress_line(results[-1])}", flush=True)
                continue
            spec = base | {
                "provider": name,
                "dtype": args.dtype,
                "check_n": args.check_n,
                "budget_s": args.budget_s,
                "max_repeats": args.max_repeats,
                "min_repeats": args.min_repeats,
                "threads": args.threads,
            }
            load1 = os.getloadavg()[0]
            start = time.perf_counter()
            payload = _spawn_worker(spec, args.worker_timeout)
            wall = time.perf_counter() - start
            result = Result(**base, load1=load1, wall_s=wall, **payload)
            results.append(result)
            if result.status == "ok" and result.time_median_ms is not None:
                history[(provider.name, cell.variant, cell.d)] = (
                    cell.n * cell.n,
                    result.time_median_ms / 1e3,
                )
            print(f"[{done}/{total}] {_progress_line(result)}", flush=True)
    return results


def _fork_worker(spec: dict[str, Any], conn: Any) -> None:
    conn.send(measure_cpu_worker(spec))
    conn.close()


def _spawn_worker(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Measure one (provider, cell) in a forked child of this process, which has imported but not computed.

    fork, not a fresh interpreter: same clean state at no start-up cost (importing torch and the peers
    takes seconds per process on a small machine). This parent never runs a tensor op, so no OpenMP pool
    is inherited. The child's peak RSS is reset before measuring, so the parent's footprint is not counted.
    """
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_fork_worker, args=(spec, sender), daemon=True)
    proc.start()
    sender.close()
    try:
        if receiver.poll(timeout_s):
            return receiver.recv()
        return {"status": "error", "reason": f"timed out after {timeout_s:.0f} s"}
    except EOFError:
        proc.join()
        return {"status": "error", "reason": f"worker died (exit code {proc.exitcode}; out of memory?)"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        receiver.close()


def preimport(providers: list[str], variants: list[str]) -> None:
    """Import what the workers need once in the parent, so every forked worker inherits it."""
    import common.kernels.chunked  # noqa: F401
    import common.kernels.reference  # noqa: F401

    names = {load_provider(p).name for p in providers}
    if {"eager", "compile"} & names and "clip" in variants:
        import open_clip.loss  # noqa: F401
    if "pml" in names:
        import pytorch_metric_learning.losses  # noqa: F401
    if "compile" in names:
        import torch._dynamo  # noqa: F401
        import torch._inductor.compile_fx  # noqa: F401


def _progress_line(r: Result) -> str:
    what = f"{r.variant} N={r.n} d={r.d} {r.provider}"
    if r.status != "ok":
        return f"{what}: {r.status} {r.reason}"
    return (
        f"{what}: {_fmt_time(r.time_median_ms)} (n={r.repeats}), {r.mem_extra_mb:.0f} MB extra, "
        f"check {r.check_error:.1e}, load {r.load1:.1f}, {r.wall_s:.0f} s wall"
    )


# -------------------------------------------------------------------------------------------------- CUDA


def _cuda_free_bytes() -> float:
    free, _ = torch.cuda.mem_get_info()
    return float(free)


def run_cuda(cells: list[Cell], providers: list[str], args, results: list[Result]) -> list[Result]:
    """In-process on CUDA: check, memory per provider, then do_bench with providers interleaved.

    Appends to `results` as it goes, so an interrupted run still reports what it measured."""
    from triton.testing import do_bench

    dtype = getattr(torch, args.dtype)
    history: dict[tuple[str, str, int], tuple[int, float]] = {}
    built: dict[tuple[str, str], OpFn] = {}
    for cell in sorted(cells, key=lambda c: (c.n * c.n * c.d, c.variant)):
        variant = VARIANTS[cell.variant]
        live: dict[str, OpFn] = {}
        cell_results: dict[str, Result] = {}
        for name in providers:
            provider = load_provider(name)
            base = {"variant": cell.variant, "n": cell.n, "d": cell.d, "provider": provider.name}
            reason = _unavailable_reason(provider, cell.variant, cell.n, "cuda")
            reason = reason or _feasibility(provider, cell, "cuda", history, args)
            if reason:
                status = "n/a" if reason == NOT_APPLICABLE or reason.startswith("n/a") else "skip"
                cell_results[name] = Result(**base, status=status, reason=reason)
                continue
            try:
                fn = built.setdefault((name, cell.variant), provider.build(variant))
                small = make_inputs(variant, args.check_n, cell.d, dtype, "cuda", seed=1)
                err = check_error(variant, small, run_op(fn, variant, small))
            except Exception as exc:  # a peer library failing is a result, not a crash of the benchmark
                cell_results[name] = Result(
                    **base, status="error", reason=f"{type(exc).__name__}: {exc}"[:200]
                )
                continue
            if not err <= tolerance(dtype):
                reason = f"wrong at N={args.check_n}: rel. error {err:.2g}"
                cell_results[name] = Result(**base, status="FAIL", reason=reason, check_error=err)
                continue
            cell_results[name] = Result(
                **base, status="ok", check_error=err, mem_method="max_memory_allocated"
            )
            live[name] = fn
        x = make_inputs(variant, cell.n, cell.d, dtype, "cuda")
        for name, fn in live.items():
            run_op(fn, variant, x)  # warm-up (compile, autotune) outside the memory window
            torch.cuda.synchronize()
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
            run_op(fn, variant, x)
            torch.cuda.synchronize()
            cell_results[name].mem_extra_mb = (torch.cuda.max_memory_allocated() - baseline) / 2**20
        samples: dict[str, list[float]] = {name: [] for name in live}
        for _ in range(args.rounds):  # interleaved: drift in clocks or load hits every provider alike
            for name, fn in live.items():
                samples[name] += do_bench(
                    lambda fn=fn, x=x, v=variant: run_op(fn, v, x),
                    warmup=10,
                    rep=args.rep_ms,
                    return_mode="all",
                )
        for name, times in samples.items():
            r = cell_results[name]
            r.time_median_ms, r.time_p20_ms, r.time_p80_ms = quantiles(times)
            r.repeats = len(times)
            r.load1 = os.getloadavg()[0]
            history[(name, cell.variant, cell.d)] = (cell.n * cell.n, r.time_median_ms / 1e3)
        for name in providers:
            results.append(cell_results[name])
            print(_progress_line(cell_results[name]), flush=True)
        del x
    return results


# ------------------------------------------------------------------------------------------------ report


def _fmt_time(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms / 1e3:.2f} s" if ms >= 1000 else f"{ms:.1f} ms" if ms >= 1 else f"{ms * 1e3:.0f} µs"


def _fmt_cell(r: Result) -> str:
    if r.status != "ok":
        return (
            NOT_APPLICABLE
            if r.reason == NOT_APPLICABLE
            else f"{r.status if r.status == 'FAIL' else ''} {r.reason}".strip()
        )
    spread = (
        "n=1" if r.repeats == 1 else f"{_fmt_time(r.time_p20_ms)}–{_fmt_time(r.time_p80_ms)}, n={r.repeats}"
    )
    return f"{_fmt_time(r.time_median_ms)} ({spread}); {r.mem_extra_mb:.0f} MB"


def goal_rows(results: list[Result]) -> list[dict[str, Any]]:
    """CPU goal per loss variant: chunked at N = M = 16384, d = 128 under 300 MB extra and <= 1.5x eager."""
    by_key = {(r.variant, r.n, r.d, r.provider): r for r in results}
    rows = []
    for variant in LOSS_VARIANTS:
        ours = by_key.get((variant, GOAL_N, GOAL_D, "chunked"))
        eager = by_key.get((variant, GOAL_N, GOAL_D, "eager"))
        if ours is None:
            continue
        row: dict[str, Any] = {"variant": variant, "ours": ours, "eager": eager}
        if ours.status != "ok":
            row["memory_met"] = row["time_met"] = None
            row["verdict"] = f"not measured ({ours.status} {ours.reason})"
            rows.append(row)
            continue
        row["memory_met"] = ours.mem_extra_mb < GOAL_MEMORY_MB
        if eager is not None and eager.status == "ok":
            row["ratio"] = ours.time_median_ms / eager.time_median_ms
            row["time_met"] = row["ratio"] <= GOAL_TIME_RATIO
        else:
            row["ratio"] = None
            row["time_met"] = None
        parts = [
            f"memory {'met' if row['memory_met'] else 'NOT met'}",
            "time not measured (no eager)"
            if row["time_met"] is None
            else f"time {'met' if row['time_met'] else 'NOT met'}",
        ]
        row["verdict"] = ", ".join(parts)
        rows.append(row)
    return rows


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def cuda_goal_rows(results: list[Result]) -> list[dict[str, str]]:
    """The issue's CUDA goals, each with what was measured and 'met', 'NOT met' or 'not measured (why)'."""
    by_key = {(r.variant, r.n, r.d, r.provider): r for r in results}
    n, d = CUDA_GOAL_N, CUDA_GOAL_D

    def measured(variant: str, provider: str, size: tuple[int, int] = (n, d)) -> Result | str:
        r = by_key.get((variant, *size, provider))
        if r is None:
            return f"not measured ({provider} {variant} at N={size[0]}, d={size[1]} not in this run)"
        if r.status != "ok" or r.time_median_ms is None:
            return f"not measured ({provider} {variant}: {r.status} {r.reason})".replace("  ", " ")
        return r

    rows: list[dict[str, str]] = []

    def add(goal: str, *parts: Result | str, judge: Callable[..., tuple[str, bool]]) -> None:
        missing = next((p for p in parts if isinstance(p, str)), None)
        if missing is not None:
            rows.append({"goal": goal, "measured": "", "verdict": missing})
            return
        text, ok = judge(*parts)
        rows.append({"goal": goal, "measured": text, "verdict": _verdict(ok)})

    add(
        f"plain forward+backward <= {CUDA_GOAL_PLAIN_MS} ms",
        measured("plain", "ours"),
        judge=lambda o: (_fmt_time(o.time_median_ms), o.time_median_ms <= CUDA_GOAL_PLAIN_MS),
    )
    for variant in LOSS_VARIANTS:
        add(
            f"{variant}: extra memory <= {CUDA_GOAL_MEMORY_MB:.0f} MB",
            measured(variant, "ours"),
            judge=lambda o: (f"{o.mem_extra_mb:.0f} MB", o.mem_extra_mb <= CUDA_GOAL_MEMORY_MB),
        )
        add(
            f"{variant}: memory >= {CUDA_GOAL_MEMORY_VS_EAGER:.0f}x below eager",
            measured(variant, "ours"),
            measured(variant, "eager"),
            judge=lambda o, e: (
                f"{e.mem_extra_mb / max(o.mem_extra_mb, 1e-9):.0f}x ({e.mem_extra_mb:.0f} / "
                f"{o.mem_extra_mb:.0f} MB)",
                e.mem_extra_mb >= CUDA_GOAL_MEMORY_VS_EAGER * o.mem_extra_mb,
            ),
        )
        for peer, speedup in CUDA_GOAL_SPEEDUP.items():
            if variant not in PROVIDERS[peer].variants:
                continue
            goal = f">= {speedup:g}x faster than {peer}" if speedup > 1 else f"no slower than {peer}"
            add(
                f"{variant}: {goal}",
                measured(variant, "ours"),
                measured(variant, peer),
                judge=lambda o, p, speedup=speedup: (
                    f"{p.time_median_ms / o.time_median_ms:.2f}x ({_fmt_time(p.time_median_ms)} / "
                    f"{_fmt_time(o.time_median_ms)})",
                    p.time_median_ms >= speedup * o.time_median_ms,
                ),
            )
    for variant, limit in CUDA_GOAL_VS_PLAIN.items():
        add(
            f"{variant} <= {limit:g}x plain time",
            measured(variant, "ours"),
            measured("plain", "ours"),
            judge=lambda o, p, limit=limit: (
                f"{o.time_median_ms / p.time_median_ms:.2f}x",
                o.time_median_ms <= limit * p.time_median_ms,
            ),
        )
    for variant in TOPK_VARIANTS:
        add(
            f"{variant}: exact and <= {CUDA_GOAL_TOPK_VS_FORWARD:g}x the fused forward (plain_fwd)",
            measured(variant, "ours"),
            measured("plain_fwd", "ours"),
            judge=lambda t, f: (
                f"{t.time_median_ms / f.time_median_ms:.2f}x ({_fmt_time(t.time_median_ms)} / "
                f"{_fmt_time(f.time_median_ms)})",
                t.time_median_ms <= CUDA_GOAL_TOPK_VS_FORWARD * f.time_median_ms,
            ),
        )
    variant, big_n, big_d = CUDA_LARGEST
    add(
        f"{variant} at N={big_n}, d={big_d} runs",
        measured(variant, "ours", (big_n, big_d)),
        judge=lambda o: (f"{_fmt_time(o.time_median_ms)}, {o.mem_extra_mb:.0f} MB extra", True),
    )
    return rows


def write_reports(results: list[Result], args, device: str, started: float, load_start: tuple) -> Path:
    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = device.replace(" ", "_")
    fields = [f.name for f in dataclasses.fields(Result)]
    with (out_dir / f"kernels_{slug}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["device", "dtype", *fields])
        writer.writeheader()
        for r in results:
            writer.writerow({"device": device, "dtype": args.dtype, **dataclasses.asdict(r)})

    versions = []
    for package in (
        "torch",
        "triton",
        "open_clip_torch",
        "pytorch-metric-learning",
        "inf-cl",
        "cut-cross-entropy",
    ):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    load_end = os.getloadavg()
    runtime = time.perf_counter() - started
    command = " ".join(["python -m benchmarks.kernels", *sys.argv[1:]])
    lines = [
        "# Contrastive kernels: speed and memory",
        "",
        f"`{command}` on {device} ({_cpu_model() if device.startswith('cpu') else device}), "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
        f"{args.threads or torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} logical CPUs, dtype {args.dtype}, temperature {TEMPERATURE}, Python "
        f"{platform.python_version()}.",
        "",
        "Versions: " + ", ".join(versions) + ".",
        "",
        f"Load average (1/5/15 min) at start {_fmt_load(load_start)}, at end {_fmt_load(load_end)}; "
        "the machine is shared, so other processes may have competed for the CPU "
        "(the CSV has the 1-min load per cell). "
        f"Total runtime {runtime / 60:.1f} min.",
        "",
        *(
            [
                "**Interrupted** (SIGTERM or Ctrl-C): the cells below are those measured before; the rest of "
                "the grid was not run.",
                "",
            ]
            if getattr(args, "interrupted", False)
            else []
        ),
        *_load_warning(load_start, args),
        "Each cell: median time (p20–p80, number of timed calls); extra peak memory over the inputs. "
        + (
            "CPU: one fresh forked process per (provider, cell); perf_counter; peak RSS (VmHWM reset "
            "after the inputs are built; ru_maxrss where that is unavailable) minus the RSS at that point; "
            "loss variants are forward+backward w.r.t. query and key, top-k is forward only. "
            f"A cell's first call is timed too when it takes >= 1 s; calls stop after {args.budget_s:g} s "
            f"but not before {args.min_repeats} (so the largest cells get {args.min_repeats}). "
            if device.startswith("cpu")
            else "CUDA: triton.testing.do_bench, providers interleaved; max_memory_allocated. "
        )
        + f"Every measured cell first passed a correctness check at N={args.check_n} against a float64 "
        "materialised reference (relative error in the CSV); FAIL means it did not and was not timed.",
        "",
        "Providers: "
        + "; ".join(f"`{p.name}`: {p.description}" for p in map(load_provider, args.providers))
        + ".",
        "",
        f"Variants: plain InfoNCE; `clip` symmetric (CLIP); `masking` false-negative masking ({NUM_CLASSES} "
        f"classes); `hcl` hard-negative beta={HCL_BETA}; `dcl` debiased tau+={DCL_TAU_PLUS}; `plain_fwd` the "
        "plain loss, forward only; `topk<k>` "
        "top-k most similar keys excluding the positive.",
        "",
    ]
    if device.startswith("cpu"):
        lines += ["## Goal (CPU, 2 cores)", ""]
        lines += [
            f"N = M = {GOAL_N}, d = {GOAL_D}, {args.dtype} forward+backward: `chunked` (this repo's op on "
            f"the CPU) under {GOAL_MEMORY_MB:.0f} MB extra at no more than {GOAL_TIME_RATIO}x eager time.",
            "",
            "| variant | chunked time | eager time | ratio | chunked extra MB | eager extra MB | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in goal_rows(results):
            ours, eager = row["ours"], row["eager"]
            eager_ok = eager is not None and eager.status == "ok"
            ratio = "" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
            ours_mb = "" if ours.mem_extra_mb is None else f"{ours.mem_extra_mb:.0f}"
            eager_time = _fmt_time(eager.time_median_ms) if eager_ok else (eager.reason if eager else "")
            eager_mb = f"{eager.mem_extra_mb:.0f}" if eager_ok else ""
            lines.append(
                f"| {row['variant']} | {_fmt_time(ours.time_median_ms)} | {eager_time} | {ratio} | "
                f"{ours_mb} | {eager_mb} | {row['verdict']} |"
            )
        if not goal_rows(results):
            lines.append("| (goal cell not in this grid) | | | | | | |")
        lines += [
            "",
            "CUDA goals: not measured: no GPU in this run. They are, at N = M = "
            f"{CUDA_GOAL_N}, d = {CUDA_GOAL_D}, bfloat16 (`benchmarks/gpu_check.sh` measures them):",
            "",
        ]
        lines += [f"- {row['goal']}" for row in cuda_goal_rows([])]
        lines.append("")
    else:
        goals = cuda_goal_rows(results)
        met = sum(row["verdict"] == "met" for row in goals)
        lines += [
            "## Goals (CUDA)",
            "",
            f"N = M = {CUDA_GOAL_N}, d = {CUDA_GOAL_D}, {args.dtype} inputs, `ours` = Triton; "
            f"{met} of {len(goals)} met.",
            "",
            "| goal | measured | verdict |",
            "|---|---|---|",
            *(f"| {row['goal']} | {row['measured']} | {row['verdict']} |" for row in goals),
            "",
        ]
    for variant in [v for v in VARIANTS if any(r.variant == v for r in results)]:
        rows = [r for r in results if r.variant == variant]
        shown = [
            p
            for p in dict.fromkeys(r.provider for r in rows)
            if any(r.reason != NOT_APPLICABLE and r.provider == p for r in rows)
        ]
        op = "forward+backward" if VARIANTS[variant].op == "loss" else "forward only"
        lines += [f"## {variant} ({op})", "", "| N | d | " + " | ".join(shown) + " |"]
        lines.append("|---|---|" + "---|" * len(shown))
        for n, d in dict.fromkeys((r.n, r.d) for r in rows):
            cells = {r.provider: r for r in rows if (r.n, r.d) == (n, d)}
            lines.append(
                f"| {n} | {d} | "
                + " | ".join(_fmt_cell(cells[p]) if p in cells else "" for p in shown)
                + " |"
            )
        lines.append("")
    md_path = out_dir / f"kernels_{slug}.md"
    md_path.write_text("\n".join(lines))
    return md_path


def _load_warning(load: tuple, args) -> list[str]:
    cpus = os.cpu_count() or 1
    if load[0] <= cpus:
        return []
    return [
        f"**The machine was oversubscribed** (1-min load {load[0]:.1f} on {cpus} logical CPUs): times are "
        "inflated. With more than one torch thread every parallel region also waits for descheduled "
        "threads, which penalises ops made of many small kernels (the chunked tiles) far more than eager's "
        "few large ones; `--threads 1` keeps the comparison fair on a busy machine. Re-run on an idle "
        "machine for reference numbers; memory is unaffected.",
        "",
    ]


def _fmt_load(load: tuple) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -------------------------------------------------------------------------------------------------- main


def build_grid(args) -> list[Cell]:
    """Loss variants over N x d, top-k over N at the largest d, the goal cell (N=16384, d=128) and one
    small plain cell where the small-N peer (pytorch-metric-learning) runs beside the others."""
    cells: dict[tuple[str, int, int], Cell] = {}
    if args.small_n and "plain" in args.variants:
        cells[("plain", args.small_n, max(args.d))] = Cell("plain", args.small_n, max(args.d))
    for variant in args.variants:
        for n in args.n:
            for d in args.d:
                if VARIANTS[variant].op == "topk" and d != max(args.d):
                    continue
                cells[(variant, n, d)] = Cell(variant, n, d)
        if args.goal:
            cells[(variant, GOAL_N, GOAL_D)] = Cell(variant, GOAL_N, GOAL_D)
    if args.device == "cuda" and args.largest and CUDA_LARGEST[0] in args.variants:
        cells[CUDA_LARGEST] = Cell(*CUDA_LARGEST)
    return list(cells.values())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if cuda else "cpu")
    parser.add_argument("--quick", action="store_true", help="a small grid (minutes on a laptop CPU)")
    parser.add_argument("--n", type=int, nargs="+", help="rows N = M (default: per device)")
    parser.add_argument("--d", type=int, nargs="+", help="embedding widths (default: per device)")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), help="default: all (CPU: all but plain_fwd)"
    )
    parser.add_argument(
        "--providers", nargs="+", help="names or module:attribute (default: all for the device)"
    )
    parser.add_argument(
        "--compile-variants",
        nargs="+",
        choices=list(VARIANTS),
        help="variants the compile provider runs (default: all); compiling each costs tens of seconds",
    )
    parser.add_argument("--no-goal", dest="goal", action="store_false", help="leave out the CPU goal cell")
    parser.add_argument(
        "--no-largest",
        dest="largest",
        action="store_false",
        help=f"CUDA: leave out the {CUDA_LARGEST[0]} cell at N={CUDA_LARGEST[1]}, d={CUDA_LARGEST[2]}",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="default fp32 CPU, bf16 CUDA"
    )
    parser.add_argument("--small-n", type=int, default=512, help="N of the small plain cell (0: none)")
    parser.add_argument("--threads", type=int, help="CPU: torch intra-op threads (default: torch's)")
    parser.add_argument("--check-n", type=int, default=257, help="rows of the correctness check")
    parser.add_argument("--budget-s", type=float, default=6.0, help="CPU: timing budget per (provider, cell)")
    parser.add_argument("--max-repeats", type=int, default=5, help="CPU: timed calls per (provider, cell)")
    parser.add_argument("--min-repeats", type=int, default=2, help="CPU: timed calls even past the budget")
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="skip cells predicted slower per call"
    )
    parser.add_argument(
        "--worker-timeout", type=float, default=900.0, help="CPU: seconds per (provider, cell)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="CUDA: interleaved do_bench rounds")
    parser.add_argument("--rep-ms", type=float, default=100.0, help="CUDA: do_bench rep per round")
    parser.add_argument("--out", help="output directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda but torch.cuda.is_available() is False")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.variants is None:
        skip = () if args.device == "cuda" else FORWARD_VARIANTS
        args.variants = [name for name in VARIANTS if name not in skip]
    if args.device == "cuda":
        args.n = args.n or ([4096, 8192] if args.quick else [4096, 8192, 16384, 32768, 65536])
        args.d = args.d or ([128] if args.quick else [64, 128, 256, 768])
        if args.quick:
            args.largest = False
    else:
        args.n = args.n or ([1024, 2048] if args.quick else [4096, 8192])
        args.d = args.d or ([64] if args.quick else [64, 128])
        if args.quick:
            args.goal = False
    default = [p.name for p in PROVIDERS.values() if args.device in p.devices]
    if args.device == "cpu":
        default.remove("ours")  # identical to chunked on the CPU
    args.providers = args.providers or default
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compile_variants:  # workers are forked, so they see the narrowed provider too
        narrowed = dataclasses.replace(PROVIDERS["compile"], variants=tuple(args.compile_variants))
        PROVIDERS["compile"] = narrowed
    if args.device == "cpu":
        # Compile in-process: a compile-worker pool per forked measurement costs more than it saves here.
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    started, load_start = time.perf_counter(), os.getloadavg()
    cells = build_grid(args)
    results: list[Result] = []
    # `timeout` and batch schedulers stop a run with SIGTERM: write what was measured, then fail.
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    interrupted = False
    cuda = args.device == "cuda"
    device = f"cuda-{torch.cuda.get_device_name(0)}" if cuda else f"cpu-{platform.machine()}"
    try:
        if cuda:
            run_cuda(cells, args.providers, args, results)
        else:
            preimport(args.providers, args.variants)
            run_cpu(cells, args.providers, args, results)
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted after {len(results)} of {len(cells) * len(args.providers)} measurements")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    args.interrupted = interrupted
    md_path = write_reports(results, args, device, started, load_start)
    print(f"written {md_path} and {md_path.with_suffix('.csv')}")
    for row in goal_rows(results):
        print(f"goal {row['variant']}: {row['verdict']}")
    if interrupted:
        sys.exit(1)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
