"""GPU check: kernels against float64, the 1B and the 7B-width PLT timed per R and backend, the
chunked cross-entropy, PLT's decode latency and a profiler table, in one run of a few minutes.

    python bench/gpu_check.py                        # on a GPU machine (bench/gpu_check.sh runs this)
    python bench/gpu_check.py --device cpu --tiny    # the same code path on a laptop, in seconds

In order, each case skipped once ``--budget-s`` has run out (the order puts first what the GPU issue
asks first):
1. Kernels (bench/check_kernels.py): attention backends (torch, flex, flash where it imports) vs
   float64, values and gradients; the chunked head + cross-entropy vs the unfused one, with its time
   and peak memory (and liger-kernel's when it imports).
2. plt_1b at R=1, 2: torch backend without and with the chunked cross-entropy, flex with it.
   The faster of torch and flex at R=2 is the backend ``auto`` should take without flash-attn.
   Then that backend with the chunked cross-entropy and ``model.fused_elementwise`` (RMSNorm, RoPE
   and SwiGLU fused, model/fused_elementwise.py), and its loss against the unfused run's.
3. plt_7b's width (hidden 5120, 40 heads, 8 KV heads, intermediate 27648) with as many of its 14
   layers as the planner says fit the device with AdamW (bench/train_step.py), R=1, 2, each
   without and with the fused elementwise kernels. The later cases take the fused kernels if
   they were faster at the 7B width (``fused_faster``).
4. Decode latency (bench/decode.py): plt_1b, batch 1 and 8, R=1, R=2 parallel, R=2 sequential;
   a profiler table of one plt_1b R=2 step.
5. As time allows: 7B width R=2 with recomputation, its decode latency, R=3, 4 of both models,
   the rest of the recomputation variants.
``--tiny`` (the CPU dry run): plt_tiny and a small stand-in of the 7B width on a pretend 48 MiB
device; flex cases that train are not run on CPU (torch's flex has no CPU backward).
Writes gpu_check.json and gpu_check.md (and profile_*.txt) under ``--out`` (default $OUT, else
outputs/gpu_check). Exit status 1 if a kernel check fails or a case raises.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import gpu_report  # noqa: E402
from bench.check_kernels import check_attention, check_cross_entropy  # noqa: E402
from bench.decode import build as build_for_decoding, latency_rows  # noqa: E402
from bench.train_step import (SEVEN_B_WIDTH, TINY_WIDTH, load_preset, matmul_tflops,  # noqa: E402
                              seven_b_width, time_model)
from model.flops import GPU_PEAK_TFLOPS  # noqa: E402
from model.kernels import flash_available  # noqa: E402
from planning.planner import RESERVE_FRACTION  # noqa: E402
from pretrain.distributed import shutdown_distributed, single_process_world  # noqa: E402

TINY_CAPACITY = 48 * 2**20  # the --tiny stand-in's pretend device: fewer than 14 layers fit


class Check:
    """The run's settings, its results so far and the time it has left."""

    def __init__(self, args):
        self.args, self.device = args, torch.device(args.device)
        self.on_gpu = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.on_gpu else torch.float32
        self.seq = args.seq or (128 if args.tiny else 8192)
        self.steps = args.steps
        self.start = time.monotonic()
        self.failed = False
        self.result = dict(meta=dict(
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            device=torch.cuda.get_device_name(0) if self.on_gpu else "cpu",
            torch=torch.__version__, cuda=torch.version.cuda,
            flash_attn="yes" if flash_available() else "no",
            command=" ".join(["python bench/gpu_check.py", *(args.argv or [])]),
            seq=self.seq, steps=self.steps, dtype=str(self.dtype).replace("torch.", "")),
            kernels=[], training=[], decode=[], profiles={},
            not_run=[])

    def time_left(self) -> bool:
        return self.args.budget_s is None or time.monotonic() - self.start < self.args.budget_s

    def run(self, name: str, case) -> None:
        """One case: skipped without time, its error recorded (and the check failed) if it raises."""
        if not self.time_left():
            self.result["not_run"].append(dict(case=name, why=f"time budget "
                                               f"{self.args.budget_s:.0f} s spent"))
        else:
            print(f"-- {name} ({time.monotonic() - self.start:.0f} s in)", flush=True)
            try:
                case()
            except Exception as error:  # noqa: BLE001 a case's failure is a result; go on
                traceback.print_exc()
                self.failed = True
                self.result["not_run"].append(dict(case=name, why=f"error: {error!r}"[:500]))
        gpu_report.write(self.result, self.args.out)

    def skip(self, name: str, why: str) -> None:
        self.result["not_run"].append(dict(case=name, why=why))

    # -- the cases --------------------------------------------------------------------------
    def train(self, cfg, profile_name=None) -> None:
        meta = self.result["meta"]
        row = time_model(cfg, self.device, self.dtype, self.seq, self.args.batch, self.steps,
                         meta["peak_tflops"], meta["matmul_tflops"], profile=bool(profile_name))
        if profile_name:
            table = row.pop("profile_table")
            self.result["profiles"][profile_name] = row.pop("profile_top")
            with open(os.path.join(self.args.out, f"profile_{profile_name}.txt"), "w") as stream:
                stream.write(table + "\n")
        self.result["training"].append(row)
        print("model: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in row.items()), flush=True)

    def small(self, loops, backend="torch", chunked=True, recompute="none", fused=False):
        return load_preset("plt_tiny" if self.args.tiny else "plt_1b", num_loops=loops,
                           attention_backend=backend, chunked_cross_entropy=chunked,
                           recompute=recompute, fused_elementwise=fused)

    def wide(self, loops, backend, recompute="none", fused=False):
        capacity = TINY_CAPACITY if self.args.tiny else (
            torch.cuda.mem_get_info()[1] * (1 - RESERVE_FRACTION))
        cfg = seven_b_width(loops, recompute, True, self.seq, backend, capacity, self.args.tiny,
                            fused)
        if cfg is None:
            raise RuntimeError(f"not even one 7B-width layer fits at R={loops}")
        return cfg

    def decode(self, model: str, make_model) -> None:
        tiny = self.args.tiny
        rows = latency_rows(make_model, (1, 2) if tiny else (1, 8), 16 if tiny else 512,
                            4 if tiny else 64, self.device)
        self.result["decode"] += [dict(model=model, **r) for r in rows]
        for r in rows:
            print(f"decode: {model} batch {r['batch']} R={r['loops']} {r['mode']}: "
                  f"{r['ms_per_token']:.2f} ms/token ({r['vs_r1']:.2f}x R=1)", flush=True)

    def fastest_backend(self) -> str:
        """torch or flex, by tokens/s at the largest R both ran with the chunked cross-entropy."""
        ran = {(r["attention"], r["loops"]): r["tokens_per_s"] for r in self.result["training"]
               if r["model"] != "plt_7b_width" and r["chunked_ce"] and r["recompute"] == "none"
               and not r.get("fused")}
        both = [loops for (backend, loops) in ran if backend == "flex" and ("torch", loops) in ran]
        if not both:
            return "torch"
        loops = max(both)
        return "flex" if ran[("flex", loops)] > ran[("torch", loops)] else "torch"

    def fused_faster(self) -> bool:
        """Whether model.fused_elementwise gave more tokens/s than the same case without it: the
        7B width's rows if both ran there (the later cases are of that width), else plt_1b's, at
        the largest R both ran (without recomputation)."""
        rows = [r for r in self.result["training"] if r["recompute"] == "none"]
        for wide in (True, False):
            ran = {(bool(r.get("fused")), r["attention"], r["loops"]): r["tokens_per_s"]
                   for r in rows if (r["model"] == "plt_7b_width") == wide and r["chunked_ce"]}
            both = [key[1:] for key in ran if key[0] and (False, *key[1:]) in ran]
            if both:
                key = max(both, key=lambda k: k[1])
                return ran[(True, *key)] > ran[(False, *key)]
        return False

    def fused_loss_gap(self) -> dict:
        """Each fused run's last loss relative to its unfused twin's (the same seed, so the same
        weights and tokens, and the same steps): fusion changes rounding only, so they agree to
        about bf16's precision after a few steps."""
        rows = self.result["training"]
        gaps = {}
        for r in rows:
            twin = [u for u in rows if not u.get("fused") and all(
                u[k] == r[k] for k in ("model", "layers", "loops", "attention", "chunked_ce",
                                       "recompute"))]
            if r.get("fused") and twin:
                gaps[f"{r['model']} R={r['loops']} {r['attention']}"] = abs(
                    r["loss"] - twin[0]["loss"]) / max(abs(twin[0]["loss"]), 1e-12)
        return gaps


def plan(check: Check) -> None:
    """Every case, in the order of the module docstring."""
    args, tiny = check.args, check.args.tiny
    loops = [int(r) for r in args.loops.split(",")]
    first, rest = loops[:2], loops[2:]
    flex_trains = check.on_gpu  # torch's flex_attention has no CPU backward
    for r in first:
        check.run(f"1B R={r} torch", lambda r=r: check.train(check.small(r, chunked=False)))
        check.run(f"1B R={r} torch chunked CE", lambda r=r: check.train(check.small(r)))
        if flex_trains:
            check.run(f"1B R={r} flex chunked CE", lambda r=r: check.train(check.small(r, "flex")))
        else:
            check.skip(f"1B R={r} flex chunked CE", "flex has no backward on CPU")
    best = check.result["fastest_backend"] = check.fastest_backend()
    print(f"fastest backend without flash-attn: {best}", flush=True)
    for r in first:
        check.run(f"1B R={r} {best} chunked CE fused elementwise",
                  lambda r=r: check.train(check.small(r, best, fused=True)))
    for r in first:
        check.run(f"7B width R={r} {best}", lambda r=r: check.train(check.wide(r, best)))
        check.run(f"7B width R={r} {best} fused elementwise",
                  lambda r=r: check.train(check.wide(r, best, fused=True)))
    fused = check.result["fused_elementwise_faster"] = check.fused_faster()
    check.result["fused_loss_gap"] = check.fused_loss_gap()
    print(f"fused elementwise kernels faster: {fused}; relative loss gap to the unfused runs: "
          f"{check.result['fused_loss_gap']}", flush=True)
    check.run("decode 1B", lambda: check.decode(
        "plt_tiny" if tiny else "plt_1b",
        lambda n: build_for_decoding("plt_tiny" if tiny else "plt_1b", args.device, num_loops=n)))
    check.run("profile 1B R=2", lambda: check.train(check.small(2, best), profile_name="1b_R2"))
    check.run(f"7B width R=2 {best} recompute", lambda: check.train(check.wide(2, best, "full",
                                                                              fused)))
    width = TINY_WIDTH if tiny else SEVEN_B_WIDTH
    check.run("decode 7B width", lambda: check.decode("plt_7b_width", lambda n: build_for_decoding(
        "plt_tiny" if tiny else "plt_7b", args.device, num_loops=n, **width)))
    for r in rest:
        check.run(f"1B R={r} {best}", lambda r=r: check.train(check.small(r, best, fused=fused)))
        check.run(f"7B width R={r} {best}",
                  lambda r=r: check.train(check.wide(r, best, fused=fused)))
    for r in [*first[:1], *rest]:
        check.run(f"7B width R={r} {best} recompute",
                  lambda r=r: check.train(check.wide(r, best, "full", fused)))
    check.run("profile 7B width R=1", lambda: check.train(check.wide(1, best, fused=fused),
                                                          profile_name="7b_width_R1"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="plt_tiny, short sequences (CPU check)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after 2 warm-up ones")
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--loops", default="1,2,3,4", help="R values; the first two come first")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no case after this many seconds (default: 450 on a GPU)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/gpu_check")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device here; use --device cpu --tiny for the CPU dry run", file=sys.stderr)
            return 2
        torch.cuda.set_device(0)
        args.budget_s = 450.0 if args.budget_s is None else args.budget_s
    check = Check(args)
    meta = check.result["meta"]
    print(f"device: {meta['device']}, torch {meta['torch']}, CUDA {meta['cuda']}, flash-attn "
          f"{meta['flash_attn']}; writing {args.out}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    # --tiny: 300 tokens, long enough for the torch backend's blocked window path, with a part block
    check.run("attention kernels", lambda: check.result.update(kernels=check_attention(
        check.device, check.dtype, seq=300 if args.tiny else 1024,
        head_dim=32 if args.tiny else 128)))
    single_process_world()
    check.run("cross-entropy", lambda: check.result.update(cross_entropy=check_cross_entropy(
        check.device, check.dtype, *((300, 64, 1000) if args.tiny else (8192, 5120, 76_800)))))
    meta["matmul_tflops"] = matmul_tflops(check.device, check.dtype)
    meta["peak_tflops"] = GPU_PEAK_TFLOPS if check.on_gpu else meta["matmul_tflops"]
    print(f"matmul: {meta['matmul_tflops']:.3g} TFLOP/s measured", flush=True)
    plan(check)
    gpu_report.write(check.result, args.out)
    kernels = check.result["kernels"]  # empty if the kernel check itself raised
    kernels_ok = bool(kernels) and all(k["ok"] for k in kernels) and all(
        e.get("ok", True) for e in check.result.get("cross_entropy", {}).values())
    print(f"kernel checks: {'all ok' if kernels_ok else 'FAILED'}; cases not run: "
          f"{len(check.result['not_run'])}; wrote {args.out}/gpu_check.md and .json")
    shutdown_distributed()
    return 0 if kernels_ok and not check.failed else 1


if __name__ == "__main__":
    sys.exit(main())
