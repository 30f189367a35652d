"""Peak extra memory of token_entropy (chunked) against the naive full-tensor softmax.

Run: python benchmarks/bench_entropy_memory.py [--batch 2] [--tokens 256] [--vocab 151936]

What is measured: each method runs in its own fresh Python process (so one method's freed
memory or allocator caches cannot hide or inflate another's). The process builds the bf16
logits in place (``torch.empty(...).normal_()``, no float32 temporary), notes its resident set
size (RSS, from ``/proc/self/statm``; Linux), runs the method once, and reads the kernel's high-water
mark ``ru_maxrss`` (``resource.getrusage``): peak extra = high-water mark after - RSS before.
This counts every page the computation touched (torch's CPU allocator returns large blocks to
the OS, so RSS follows live tensors). It is checked against the expected size: naive = four
float32 ``(B, T, V)`` tensors (the upcast, softmax, log_softmax and their product); chunked =
two float32 ``(chunk, V)`` buffers + the output.

The naive baseline is ``-(softmax(x) * log_softmax(x)).sum(-1)`` with ``x = logits.float()``,
the usual hand-written version. Times are one call each, for scale only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 2**20


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(method: str, B: int, T: int, V: int, chunk: int | None, out_path: str) -> None:
    import torch

    from phasewatch.entropy import default_chunk_rows, token_entropy

    torch.manual_seed(0)
    logits = torch.empty(B, T, V, dtype=torch.bfloat16).normal_(0.0, 3.0)
    rss_before = current_rss()
    hwm_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if method == "naive":
        x = logits.float()
        result = -(torch.softmax(x, dim=-1) * torch.log_softmax(x, dim=-1)).sum(dim=-1)
        del x
        rows = B * T
    else:
        result = token_entropy(logits, chunk_size=chunk)
        rows = chunk or default_chunk_rows(V)
    elapsed = time.perf_counter() - t0
    hwm_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save(result, out_path + ".pt")
    Path(out_path).write_text(json.dumps({
        "rss_before": rss_before, "hwm_before": hwm_before, "hwm_after": hwm_after,
        "seconds": elapsed, "chunk_rows": rows,
        "logits_bytes": logits.numel() * logits.element_size(),
    }))


def run_child(method: str, args, chunk: int | None, workdir: str) -> dict:
    out = os.path.join(workdir, f"{method}-{chunk}.json")
    cmd = [sys.executable, __file__, "--child", method, "--batch", str(args.batch),
           "--tokens", str(args.tokens), "--vocab", str(args.vocab), "--out", out]
    if chunk is not None:
        cmd += ["--chunk", str(chunk)]
    subprocess.run(cmd, check=True, timeout=600)
    data = json.loads(Path(out).read_text())
    data["peak_extra"] = data["hwm_after"] - max(data["rss_before"], 0)
    data["out"] = out + ".pt"
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=151_936, help="default: Qwen2.5/Qwen3 vocabulary")
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--child", choices=["naive", "chunked"])
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.batch, args.tokens, args.vocab, args.chunk, args.out)
        return

    import torch

    B, T, V = args.batch, args.tokens, args.vocab
    full_f32 = B * T * V * 4
    with tempfile.TemporaryDirectory() as workdir:
        runs = [("naive", None, 4 * full_f32)]
        from phasewatch.entropy import default_chunk_rows

        for chunk in (None, 16):
            rows = chunk or default_chunk_rows(V)
            runs.append(("chunked", chunk, 2 * min(rows, B * T) * V * 4 + B * T * 4))
        results = [(name, chunk, expected, run_child(name, args, chunk, workdir))
                   for name, chunk, expected in runs]
        reference = torch.load(results[0][3]["out"])
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__};"
              f" bf16 logits ({B}, {T}, {V}) = {results[0][3]['logits_bytes'] / MiB:.0f} MiB;"
              f" one float32 copy = {full_f32 / MiB:.0f} MiB")
        naive_peak = results[0][3]["peak_extra"]
        naive_time = results[0][3]["seconds"]
        for name, chunk, expected, r in results:
            got = torch.load(r["out"])
            diff = (got - reference).abs().max().item()
            label = name if name == "naive" else f"chunked ({r['chunk_rows']} rows/chunk)"
            print(f"  {label:28s} peak extra {r['peak_extra'] / MiB:8.1f} MiB"
                  f" (expected ~{expected / MiB:7.1f})  x{r['peak_extra'] / naive_peak:5.3f} naive"
                  f"   time {r['seconds']:.3f} s (x{r['seconds'] / naive_time:.2f})"
                  f"   max |diff| vs naive {diff:.2e}")
        default = results[1][3]
        verdict = "MET" if default["peak_extra"] < naive_peak / 2 else "NOT MET"
        print(f"target: chunked peak extra memory well below the naive full softmax: {verdict}"
              f" (default chunking uses {default['peak_extra'] / naive_peak:.3f} x the naive peak,"
              f" {naive_peak / max(default['peak_extra'], 1):.1f} x less)")


if __name__ == "__main__":
    main()
