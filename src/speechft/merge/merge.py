"""Merge a pre-trained encoder with one or more fine-tuned ones, streaming, into HF directories.

    merge_models("speechft-tiny", ["ft-pr/"], "merged/", alpha=0.25)          # Speech-FT
    merge_alphas(m0, [m1], [0, 0.25, 0.5], ["a0/", "a25/", "a50/"])           # one pass, several α

Inputs are read one tensor at a time (into one reused buffer per input) and the output is written with a
header-first streaming writer, so the peak memory is a few tensors, whatever the model size or number of
inputs. Several outputs (α values) share every read, and for ``linear``/``task_arithmetic`` also
Σ cᵢ·τᵢ: each further α costs one scaled sum per element (plus the conversions to and from float64).
Everything is checked (options, architectures, key sets, shapes, output location) before any output
exists; outputs appear atomically (temporary directory + rename).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..models.io import CARD_FILE, render_card, resolve_model_dir
from ..utils.io import atomic_dir, check_not_input, check_writable
from ..utils.jobs import intra_op_threads
from .keys import KeyPlan, check_architectures, layer_group, plan_keys
from .methods import (COMPUTE_DTYPE, MergeMethod, MergeParams, check_params, describe, exact_input, get_method,
                      layer_alpha_pairs, task_sum)
from .stream import SINGLE_FILE, ST_DTYPES, TORCH_TO_ST, SafetensorsDir, StreamingSafetensorsWriter, TensorSpec

log = logging.getLogger(__name__)

OUTPUT_DTYPES = {"source": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COPIED_FILES = ("preprocessor_config.json",)
BLOCK = 1 << 16  # elements merged at once (float64 temporaries: a few MiB per input)
TASK_BLOCK = 1 << 17  # elements at once for θ₀ + α·Σ cᵢ·τᵢ methods (one reused 1 MiB float64 buffer per thread)


def open_sources(pretrained: str, finetuned: Sequence[str]) -> list[SafetensorsDir]:
    """Resolve and open θ₀ and every θ′ (headers and configs only), checking their architectures."""
    if not finetuned:
        raise ValueError("merging needs at least one fine-tuned model (--finetuned)")
    sources = [SafetensorsDir(resolve_model_dir(r), name=r) for r in [pretrained, *finetuned]]
    check_architectures([(s.name, s.config) for s in sources])
    return sources


def tensor_seed(seed: int, key: str, block: int = 0) -> int:
    """A seed per (parameter, block), independent of the order tensors are visited in."""
    digest = hashlib.sha256(f"{seed}:{key}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def merge_tensor(method: MergeMethod, params: MergeParams, key: str, base: torch.Tensor,
                 tuned: Sequence[torch.Tensor], out_dtype: torch.dtype, stats: Optional[dict] = None) -> torch.Tensor:
    """One merged parameter in ``out_dtype`` (a new tensor); ``key`` (canonical name) seeds random methods.

    Methods are elementwise given ``stats`` (see :mod:`.methods`), so large parameters are merged in
    blocks of :data:`BLOCK` elements: the float64 temporaries stay a few MiB whatever the tensor size.
    Random methods draw block j's masks from a generator seeded by (seed, key, j). ``linear`` and
    ``task_arithmetic`` go through :func:`merge_tensors` (same values as their ``fn``, fewer passes).
    Per-layer α (``params.layer_alphas``) is resolved for ``key`` first.
    """
    params = params.at(key)
    if method.task_coeffs is not None:
        out = next(merge_tensors(method, [params], key, base, tuned, out_dtype))
        shared = out.numel() and any(out.data_ptr() == t.data_ptr() for t in (base, *tuned))
        return out.clone() if shared else out
    if stats is None and method.prepare is not None:
        stats = method.prepare(base, tuned, params)
    n = base.numel()
    if n <= BLOCK:
        gen = torch.Generator().manual_seed(tensor_seed(params.seed, key)) if method.random else None
        return method.fn(base, tuned, params, gen, stats).to(out_dtype)
    out = torch.empty(base.shape, dtype=out_dtype)
    flat_out, flat_base, flat_tuned = out.view(-1), base.reshape(-1), [t.reshape(-1) for t in tuned]
    for j, start in enumerate(range(0, n, BLOCK)):
        sl = slice(start, start + BLOCK)
        gen = torch.Generator().manual_seed(tensor_seed(params.seed, key, j)) if method.random else None
        flat_out[sl] = method.fn(flat_base[sl], [t[sl] for t in flat_tuned], params, gen, stats)
    return out


def merge_tensors(method: MergeMethod, params_list: Sequence[MergeParams], key: str, base: torch.Tensor,
                  tuned: Sequence[torch.Tensor], out_dtype: torch.dtype,
                  math: Optional["MathPool"] = None) -> Iterator[torch.Tensor]:
    """:func:`merge_tensor` for each of ``params_list`` in turn, sharing the work that does not depend on α.

    For θ₀ + α·Σ cᵢ·τᵢ methods (``linear``, ``task_arithmetic``) the arithmetic is that of ``method.fn``,
    in float64, in blocks of :data:`TASK_BLOCK` elements through reused float64 buffers (an input is
    converted as it is read), and the result is converted to ``out_dtype`` as it is stored. With several
    α needing it, Σ cᵢ·τᵢ is computed once (one float64 tensor) and each α costs a scaled sum and a
    conversion. With ``math`` (a :class:`MathPool`), a large tensor's blocks are shared out between
    threads. Otherwise the α-independent statistics (TIES thresholds) are computed once. The values are
    those of separate calls, bit for bit; a result may share memory with an input (α=0 gives θ₀
    itself): write it, do not modify it. Per-layer α (``layer_alphas``) is resolved for ``key`` first.
    """
    params_list = [p.at(key) for p in params_list]
    if method.task_coeffs is None:
        stats = method.prepare(base, tuned, params_list[0]) if method.prepare else None
        for params in params_list:
            yield merge_tensor(method, params, key, base, tuned, out_dtype, stats)
        return
    n = base.numel()
    flat_base, flat_tuned = base.reshape(-1), [t.reshape(-1) for t in tuned]
    coeffs = [method.task_coeffs(p, len(tuned)) for p in params_list]
    sames = [exact_input(base, tuned, c, p.alpha) for c, p in zip(coeffs, params_list)]  # α=0 / θ′ exactly
    pending = [tuple(c) for c, same in zip(coeffs, sames) if same is None]
    shared: dict[tuple, torch.Tensor] = {}  # coefficients -> Σ cᵢ·τᵢ (float64), when several α need it
    math = math if math is not None else MathPool(1)
    for p, c, same in zip(params_list, coeffs, sames):
        if same is not None:
            yield same.to(out_dtype)
            continue
        delta = shared.get(tuple(c))
        if delta is None and pending.count(tuple(c)) > 1:
            delta = shared[tuple(c)] = torch.empty(n, dtype=COMPUTE_DTYPE)
            math.blocks(n, lambda sl, buf: task_sum(flat_base[sl], [t[sl] for t in flat_tuned], c, delta[sl]))
        out = torch.empty(base.shape, dtype=out_dtype)
        flat_out = out.view(-1)

        def merge_block(sl: slice, buf: torch.Tensor, p=p, c=c, delta=delta) -> None:
            if delta is None:  # one α: Σ cᵢ·τᵢ of this block, then θ₀ + α·Σ in place
                d = task_sum(flat_base[sl], [t[sl] for t in flat_tuned], c, buf)
                res = torch.add(flat_base[sl], d, alpha=p.alpha, out=d)
            else:
                res = torch.add(flat_base[sl], delta[sl], alpha=p.alpha, out=buf)
            flat_out[sl] = res  # float64 arithmetic, stored as out_dtype (a separate copy is faster than out=)

        math.blocks(n, merge_block)
        yield out


class MathPool:
    """Threads that share out the blocks of one tensor's arithmetic with the thread that asks.

    ``threads`` in all, the caller's included (``threads - 1`` helpers). Used with torch's own threads
    off (``torch.set_num_threads(1)``): idle torch threads spin for a while after each parallel
    operation, taking the CPU that the merge's reader, writer and the disk need.
    """

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self.pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="merge-math") if self.threads > 1 else None

    def blocks(self, n: int, fn) -> None:
        """``fn(block, scratch)`` for every :data:`TASK_BLOCK` slice of range(n); ``scratch`` is a float64
        buffer of the block's size, reused by the thread that runs it. Each thread takes one contiguous
        run of whole blocks."""
        ways = min(self.threads, -(-n // TASK_BLOCK))
        if ways <= 1:
            self._run_part(slice(0, n), fn)
            return
        step = -(-n // TASK_BLOCK // ways) * TASK_BLOCK
        parts = [slice(start, min(start + step, n)) for start in range(0, n, step)]
        futures = [self.pool.submit(self._run_part, part, fn) for part in parts[1:]]
        try:
            self._run_part(parts[0], fn)
        finally:
            for f in futures:
                f.result()

    @staticmethod
    def _run_part(part: slice, fn) -> None:
        scratch = torch.empty(min(TASK_BLOCK, part.stop - part.start), dtype=COMPUTE_DTYPE)
        for start in range(part.start, part.stop, TASK_BLOCK):
            sl = slice(start, min(start + TASK_BLOCK, part.stop))
            fn(sl, scratch[: sl.stop - sl.start])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def output_specs(plan: KeyPlan, dtype: Optional[torch.dtype]) -> list[TensorSpec]:
    """θ₀'s layout, with floating tensors converted to ``dtype`` when one is asked for."""
    if dtype is None:
        return list(plan.out_specs)
    name = TORCH_TO_ST[dtype]
    return [TensorSpec(s.key, name, s.shape) if s.is_float else s for s in plan.out_specs]


def build_card(name: str, method: MergeMethod, params: MergeParams, sources: Sequence, plan: KeyPlan,
               dtype: str, extra: Optional[dict] = None) -> dict:
    def src(s) -> dict:
        return {"ref": s.name, "path": str(s.dir) if s.dir else None}

    card = {
        "name": name,
        "kind": "merged",
        "method": method.name,
        "formula": method.formula,
        **describe(method, params),
        "pretrained": src(sources[0]),
        "finetuned": [src(s) for s in sources[1:]],
        "merged_tensors": len(plan.merged),
        "kept_from_pretrained": plan.kept,
        "dropped": plan.dropped,
        "dtype": dtype,
        "speechft_version": __version__,
    }
    card.update(extra or {})
    card["notes"] = card_notes(method, params, plan)
    return card


def card_notes(method: MergeMethod, params: MergeParams, plan: KeyPlan) -> str:
    """A sentence or two for the README: what was merged, what kept θ₀'s values, what was dropped."""
    opts = ", ".join(f"{k}={v}" for k, v in describe(method, params).items() if v is not None)
    lines = [f"Merged {len(plan.merged)} encoder tensors with `{method.name}` ({opts}): {method.formula}."]
    if plan.kept:
        lines.append("Kept θ₀'s values: " + ", ".join(f"`{k}` ({r})" for k, r in sorted(plan.kept.items())) + ".")
    if plan.dropped:
        lines.append("Dropped: " + ", ".join(f"`{k}` ({r})" for k, r in sorted(plan.dropped.items())) + ".")
    if not plan.kept and not plan.dropped:
        lines.append("Every tensor of the pre-trained model was merged; nothing was kept or dropped.")
    return "\n\n".join(lines)


def write_model_files(tmp: Path, sources: Sequence, dtype: Optional[torch.dtype], card: dict) -> None:
    """config.json (+ preprocessor config) from θ₀, the model card; the weights are written separately."""
    config = dict(sources[0].config)
    if dtype is not None:  # transformers >= 4.56 reads "dtype", older versions "torch_dtype"
        config["dtype"] = str(dtype).replace("torch.", "")
        if "torch_dtype" in config:
            config["torch_dtype"] = config["dtype"]
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if sources[0].dir is not None:
        for fname in COPIED_FILES:
            if (sources[0].dir / fname).exists():
                shutil.copyfile(sources[0].dir / fname, tmp / fname)
    (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n")
    (tmp / "README.md").write_text(render_card(card))


def check_outputs(out_dirs: Sequence[Path], sources: Sequence, overwrite: bool, nbytes: int) -> None:
    if len({Path(d).resolve() for d in out_dirs}) != len(out_dirs):
        raise ValueError("the same output directory was given twice")
    inputs = [s.dir for s in sources if s.dir is not None]
    for d in out_dirs:
        d = Path(d)
        check_not_input(d, inputs, "--out")  # an output replaced with --overwrite must not hold an input
        if d.exists() and not overwrite:
            raise FileExistsError(f"output directory {d} already exists; pass --overwrite to replace it")
        if d.exists() and not d.is_dir():
            raise FileExistsError(f"output path {d} exists and is not a directory")
        check_writable(d, min_free_bytes=nbytes + 16 * 2**20)


def stream_merge(sources: Sequence, plan: KeyPlan, method: MergeMethod, params_list: Sequence[MergeParams],
                 out_dirs: Sequence[Path], cards: Sequence[dict], dtype: Optional[torch.dtype] = None,
                 progress: bool = True) -> list[Path]:
    """Write one merged model per (params, out_dir), reading each input tensor once for all of them."""
    specs = output_specs(plan, dtype)
    metadata = {"format": "pt"}
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_dir(Path(d), overwrite=True)) for d in out_dirs]
        writers = [stack.enter_context(StreamingSafetensorsWriter(t / SINGLE_FILE, specs, metadata)) for t in tmps]
        # Two helper threads: while this thread merges tensor i, the reader maps tensor i+1's inputs
        # (``SafetensorsDir.map``: the file's pages, fetched now if not cached, nothing copied) and the
        # writer writes tensor i-1's outputs (file IO and torch arithmetic release the GIL). A mapped
        # input is unmapped when its last view goes, once its outputs were written: an output may be
        # its input itself (α=0 gives θ₀, kept tensors are θ₀'s).
        def read(i: int):
            spec = specs[i]
            key = plan.canonical[spec.key]
            base = sources[0].map(spec.key)
            tuned = [s.map(m[key]) for s, m in zip(sources[1:], plan.maps[1:])] if key in plan.merged else None
            return base, tuned

        def write(key: str, outs: list) -> None:
            for w, t in zip(writers, outs):
                w.write(key, t)

        # A tensor's arithmetic is shared out between this thread and the MathPool's, as many threads
        # as torch would use, with torch's own threads off meanwhile (see MathPool).
        threads = torch.get_num_threads()
        math = MathPool(threads)
        stack.callback(math.close)
        stack.enter_context(intra_op_threads(1))
        reader = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="merge-read"))
        writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="merge-write"))
        written: dict[int, object] = {}  # tensor index -> future of its writes
        ahead = reader.submit(read, 0) if specs else None
        bar = tqdm(total=len(specs), desc=f"merge ({method.name})", unit="tensor", disable=not progress, leave=False)
        for i, spec in enumerate(specs):
            base, tuned = ahead.result()
            if i + 1 < len(specs):
                if i - 2 in written:  # at most three tensors' inputs in memory
                    written.pop(i - 2).result()
                ahead = reader.submit(read, i + 1)
            key = plan.canonical[spec.key]
            out_dtype = ST_DTYPES[spec.dtype]
            if tuned is not None:
                # α-independent work (Σ cᵢ·τᵢ, TIES thresholds) once for all outputs
                outs = list(merge_tensors(method, params_list, key, base, tuned, out_dtype, math))
            else:
                outs = [base.to(out_dtype) if spec.is_float else base] * len(writers)
            written[i] = writer.submit(write, spec.key, outs)
            del base, tuned, outs
            bar.update(1)
        for fut in written.values():
            fut.result()
        bar.close()
        for tmp, card in zip(tmps, cards):
            write_model_files(tmp, sources, dtype, card)
    return [Path(d) for d in out_dirs]


def _prepare(pretrained, finetuned, method, params: MergeParams, excluded: str, dtype: str):
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {dtype!r}")
    m = get_method(method)
    check_params(m, params, len(finetuned))
    sources = open_sources(pretrained, finetuned)
    plan = plan_keys(sources, excluded=excluded)
    return m, sources, plan


def merge_models(pretrained: str, finetuned: Sequence[str], out_dir: str | Path, *, method: str = "linear",
                 alpha: float = 0.25, weights: Optional[Sequence[float]] = None, density: float = 0.5,
                 seed: int = 0, majority_sign: str = "total", dtype: str = "source", excluded: str = "keep",
                 overwrite: bool = False, card_extra: Optional[dict] = None, progress: bool = True,
                 layer_alphas: Optional[dict] = None) -> Path:
    """Merge θ₀ (``pretrained``) with θ′₁…θ′ₙ into ``out_dir`` (an HF dir); see docs/merge.md.
    ``layer_alphas``: {layer group: α} for per-layer α (groups not listed take ``alpha``)."""
    return merge_alphas(pretrained, finetuned, [alpha], [out_dir], method=method, weights=weights, density=density,
                        seed=seed, majority_sign=majority_sign, dtype=dtype, excluded=excluded, overwrite=overwrite,
                        card_extra=card_extra, progress=progress, layer_alphas=layer_alphas)[0]


def merge_alphas(pretrained: str, finetuned: Sequence[str], alphas: Sequence[float], out_dirs: Sequence[str | Path],
                 *, method: str = "linear", weights: Optional[Sequence[float]] = None, density: float = 0.5,
                 seed: int = 0, majority_sign: str = "total", dtype: str = "source", excluded: str = "keep",
                 overwrite: bool = False, card_extra: Optional[dict] = None, progress: bool = True,
                 layer_alphas: Optional[dict] = None) -> list[Path]:
    """Several α in one pass over the inputs: ``out_dirs[i]`` gets α = ``alphas[i]``. ``layer_alphas``
    ({layer group: α}, :func:`.keys.layer_group` names) overrides α for those groups in every output;
    a group the models do not have is refused."""
    if len(alphas) != len(out_dirs) or not alphas:
        raise ValueError(f"{len(alphas)} alphas but {len(out_dirs)} output directories")
    finetuned = list(finetuned)
    w = tuple(float(x) for x in weights) if weights is not None else None
    params_list = [MergeParams(alpha=float(a), weights=w, density=density, seed=seed, majority_sign=majority_sign,
                               layer_alphas=layer_alpha_pairs(layer_alphas)) for a in alphas]
    m, sources, plan = _prepare(pretrained, finetuned, method, params_list[0], excluded, dtype)
    groups = {layer_group(c) for c in plan.merged}
    unknown = sorted(set(layer_alphas or ()) - groups)
    if unknown:
        raise ValueError(f"per-layer alpha: {', '.join(unknown)} is not a layer group of {pretrained} (its groups: "
                         f"{', '.join(sorted(groups))})")
    for p in params_list[1:]:
        check_params(m, p, len(finetuned))
    out_dirs = [Path(d) for d in out_dirs]
    torch_dtype = OUTPUT_DTYPES[dtype]
    check_outputs(out_dirs, sources, overwrite, sum(s.nbytes for s in output_specs(plan, torch_dtype)))
    cards = [build_card(d.name, m, p, sources, plan, dtype, card_extra) for d, p in zip(out_dirs, params_list)]
    log.info("merging %s with %d fine-tuned model(s) by %s: %d tensors merged, %d kept from θ₀, %d dropped",
             pretrained, len(finetuned), m.name, len(plan.merged), len(plan.kept), len(plan.dropped))
    return stream_merge(sources, plan, m, params_list, out_dirs, cards, torch_dtype, progress)
