"""The GPU check's results (bench/gpu_check.py): one JSON and one markdown file, rewritten after
every case so that a run stopped by its time limit still leaves what it measured."""

from __future__ import annotations

import json
import os


def _pct(x):
    return f"{x:.1%}" if isinstance(x, float) else "-"


def _num(x, fmt="{:,.1f}"):
    return fmt.format(x) if isinstance(x, (int, float)) else "-"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def markdown(result: dict) -> str:
    meta = result["meta"]
    out = [f"# GPU check, {meta['date']}", "",
           f"{meta['device']}; torch {meta['torch']}, CUDA {meta['cuda']}, flash-attn "
           f"{meta['flash_attn']}; `{meta['command']}`; sequence {meta['seq']}, {meta['steps']} "
           f"timed steps; a {meta['dtype']} matmul measured {_num(meta.get('matmul_tflops'))} "
           f"TFLOP/s; MFU is of {_num(meta.get('peak_tflops'))} TFLOP/s.", ""]
    kernels = result.get("kernels", [])
    failed = [k for k in kernels if not k["ok"]]
    out += [f"Attention kernels vs float64: {len(kernels) - len(failed)}/{len(kernels)} ok "
            f"(backends {', '.join(sorted({k['backend'] for k in kernels}))})."]
    out += [f"- FAIL {k['backend']} q_len {k['q_len']} window {k['window']}: {k['max_error']:.2e}"
            f" {k.get('grad_errors', '')} {k.get('error', '')}" for k in failed] + [""]
    if result.get("cross_entropy"):
        out += ["Head + cross-entropy, one forward + backward:", ""]
        out += _table(["path", "ms", "peak GiB above inputs", "max err / max ref", "ok"], [
            [name, _num(e["seconds"] * 1e3), _num(e["peak_bytes"] / 2**30, "{:.2f}"),
             ", ".join(f"{x:.1e}" for x in e.get("errors", [])) or "reference", e.get("ok", "-")]
            if "error" not in e else [name, "-", "-", e["error"], False]
            for name, e in result["cross_entropy"].items()])
    if result.get("training"):
        out += ["Training steps (forward + backward + AdamW):", ""]
        out += _table(["model", "layers", "R", "attention", "chunked CE", "fused", "recompute",
                       "ms/step", "tokens/s", "MFU", "MFU of matmul", "peak GiB", "planner GiB",
                       "planner/peak"], [
            [r["model"], r["layers"], r["loops"], r["attention"], r["chunked_ce"],
             r.get("fused", False), r["recompute"],
             _num(r["ms_per_step"]), _num(r["tokens_per_s"], "{:,.0f}"), _pct(r["mfu"]),
             _pct(r["mfu_of_measured_matmul"]), _num(r.get("peak_gib"), "{:.1f}"),
             _num(r["planned_gib"], "{:.1f}"), _num(r.get("planned_over_peak"), "{:.2f}")]
            for r in result["training"]])
    if result.get("fastest_backend"):
        out += [f"Fastest attention backend without flash-attn (training, R=2): "
                f"{result['fastest_backend']} (model/kernels.py AUTO_CUDA_WITHOUT_FLASH).", ""]
    if "fused_elementwise_faster" in result:
        gaps = ", ".join(f"{k} {v:.1e}" for k, v in result.get("fused_loss_gap", {}).items())
        out += [f"Fused elementwise kernels (model.fused_elementwise) faster: "
                f"{result['fused_elementwise_faster']}; the later cases "
                f"{'use' if result['fused_elementwise_faster'] else 'do not use'} them. "
                f"Loss relative to the unfused twin: {gaps or '-'}.", ""]
    if result.get("decode"):
        out += ["Decode latency per token (prefill not timed):", ""]
        out += _table(["model", "batch", "R", "mode", "ms/token", "vs R=1"], [
            [r["model"], r["batch"], r["loops"], r["mode"], _num(r["ms_per_token"], "{:.2f}"),
             _num(r["vs_r1"], "{:.2f}")] for r in result["decode"]])
    for name, ops in result.get("profiles", {}).items():
        out += [f"Profile, one step of {name} (top ops by self time):", ""]
        out += _table(["op", "calls", "self ms", "share"], [
            [o["op"][:60], o["calls"], _num(o["self_ms"]), _pct(o["share"])] for o in ops[:15]])
    if result.get("not_run"):
        out += ["Not run:", ""] + [f"- {c['case']}: {c['why']}" for c in result["not_run"]] + [""]
    return "\n".join(out)


def write(result: dict, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(result, indent=1, default=str)),
                       ("gpu_check.md", markdown(result))):
        temp = os.path.join(folder, name + ".tmp")
        with open(temp, "w") as stream:
            stream.write(text)
        os.replace(temp, os.path.join(folder, name))
