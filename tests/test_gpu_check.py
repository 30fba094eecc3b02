"""The GPU check's decisions that a CPU can test without running it (the dry run itself runs in
tests/test_readme_commands.py): how many 7B-width layers it trains, which backend it reports as the
fastest, whether the later cases take the fused elementwise kernels, and that its markdown report
renders every section."""

import argparse
import dataclasses

import pytest

from bench import gpu_report
from bench.gpu_check import Check
from bench.train_step import STATE_BYTES_PER_PARAMETER, layout, planned_bytes, seven_b_width

H200 = 139.8 * 2**30 * 0.9  # planning.planner's usable H200 less its reserve


@pytest.mark.parametrize("loops, recompute", [(1, "none"), (2, "none"), (4, "none"), (4, "full")])
def test_the_7b_width_takes_the_most_layers_the_planner_fits(loops, recompute):
    cfg = seven_b_width(loops, recompute, True, 8192, "torch", H200, tiny=False)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups,
            cfg.ffn_hidden_size) == (5120, 40, 8, 27648)
    lay = layout(cfg, 8192, 1, "torch", bf16=True)
    assert planned_bytes(cfg, lay, STATE_BYTES_PER_PARAMETER) <= H200
    if cfg.num_layers < 14:
        more = seven_b_width(loops, recompute, True, 8192, "torch", float("inf"), tiny=False)
        one_more = dataclasses.replace(more, num_layers=cfg.num_layers + 1)
        assert planned_bytes(one_more, lay, STATE_BYTES_PER_PARAMETER) > H200


def test_more_loops_fit_fewer_layers_unless_recomputed():
    layers = {(r, rc): seven_b_width(r, rc, True, 8192, "torch", H200, tiny=False).num_layers
              for r in (1, 4) for rc in ("none", "full")}
    assert layers[(1, "none")] == 14 and layers[(4, "none")] < 14 and layers[(4, "full")] == 14


def _check_with(rows):
    args = argparse.Namespace(device="cpu", tiny=True, seq=None, steps=1, budget_s=None,
                              out="unused", argv=[])
    check = Check(args)
    check.result["training"] = [dict(model="plt_1b", chunked_ce=True, recompute="none",
                                     attention=a, loops=r, tokens_per_s=t) for a, r, t in rows]
    return check


def test_the_fastest_backend_is_compared_at_the_largest_r_both_ran():
    rows = [("torch", 1, 100.0), ("flex", 1, 90.0), ("torch", 2, 50.0), ("flex", 2, 60.0),
            ("torch", 3, 30.0)]
    assert _check_with(rows).fastest_backend() == "flex"
    assert _check_with(rows[:2]).fastest_backend() == "torch"
    assert _check_with([("torch", 2, 50.0)]).fastest_backend() == "torch"  # flex never ran


def _row(model, fused, loops, tokens_per_s, loss=2.0, attention="torch"):
    return dict(model=model, layers=4, fused=fused, chunked_ce=True, recompute="none",
                attention=attention, loops=loops, tokens_per_s=tokens_per_s, loss=loss)


def test_the_fused_kernels_are_judged_at_the_7b_width_before_the_1b():
    check = _check_with([])
    one_b = [_row("plt_1b", False, 2, 100.0), _row("plt_1b", True, 2, 120.0)]
    wide = [_row("plt_7b_width", False, 1, 50.0), _row("plt_7b_width", True, 1, 40.0)]
    check.result["training"] = one_b + wide
    assert check.fused_faster() is False  # slower at the 7B width, whatever the 1B says
    check.result["training"] = one_b + wide[:1]  # the 7B width never ran fused: the 1B decides
    assert check.fused_faster() is True
    check.result["training"] = one_b[:1] + wide[:1]
    assert check.fused_faster() is False  # never ran fused: not taken
    # the fastest backend is compared on unfused rows only
    check.result["training"] = [_row("plt_1b", False, 2, 100.0),
                                _row("plt_1b", True, 2, 200.0),
                                _row("plt_1b", False, 2, 150.0, attention="flex")]
    assert check.fastest_backend() == "flex"


def test_the_fused_runs_loss_is_compared_with_its_unfused_twin():
    check = _check_with([])
    check.result["training"] = [_row("plt_1b", False, 2, 1.0, loss=2.0),
                                _row("plt_1b", True, 2, 1.0, loss=2.002),
                                _row("plt_1b", True, 1, 1.0, loss=9.0)]  # no twin: left out
    gaps = check.fused_loss_gap()
    assert list(gaps) == ["plt_1b R=2 torch"] and abs(gaps["plt_1b R=2 torch"] - 1e-3) < 1e-9


def test_the_markdown_report_has_every_section():
    result = dict(
        meta=dict(date="d", device="H200", torch="2.13", cuda="13.0", flash_attn="no",
                  command="bash bench/gpu_check.sh run", seq=8192, steps=3, dtype="bfloat16",
                  matmul_tflops=795.0, peak_tflops=989.0),
        kernels=[dict(backend="flex", q_len=1, window=64, max_error=0.5, ok=False)],
        cross_entropy={"unfused": dict(seconds=0.1, peak_bytes=2**31),
                       "chunked": dict(seconds=0.12, peak_bytes=2**28, errors=[0.0, 1e-3, 1e-3],
                                       ok=True),
                       "liger": dict(error="ImportError('triton')")},
        training=[dict(model="plt_7b_width", layers=14, loops=1, attention="flex",
                       chunked_ce=True, fused=True, recompute="none", ms_per_step=900.0,
                       tokens_per_s=9e3,
                       mfu=0.46, mfu_of_measured_matmul=0.57, peak_gib=100.0, planned_gib=110.0,
                       planned_over_peak=1.1)],
        fastest_backend="flex", fused_elementwise_faster=True,
        fused_loss_gap={"plt_7b_width R=1 flex": 2e-3},
        decode=[dict(model="plt_1b", batch=1, loops=2, mode="parallel", ms_per_token=5.0,
                     vs_r1=1.05)],
        profiles={"1b_R2": [dict(op="aten::mm", calls=10, self_ms=50.0, share=0.4)]},
        not_run=[dict(case="7B width R=4", why="time budget 450 s spent")])
    text = gpu_report.markdown(result)
    for expected in ("FAIL flex q_len 1 window 64", "| chunked | 120.0 |", "triton",
                     "| plt_7b_width | 14 | 1 | flex | True | True | none |", "46.0%",
                     "Fastest attention backend", "Fused elementwise kernels",
                     "the later cases use",
                     "plt_7b_width R=1 flex 2.0e-03",
                     "| plt_1b | 1 | 2 | parallel | 5.00 | 1.05 |", "aten::mm",
                     "7B width R=4: time budget"):
        assert expected in text, expected
