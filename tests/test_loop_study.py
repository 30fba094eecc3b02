"""The loop-study report (python -m scripts.loop_study report; scripts/study/) on synthetic run
folders whose answers are known by construction (tests/study_folders.py): the best R, the optimum
moving without CLP, a spread that swamps a difference, the compute-fair interpolation, Spearman,
the flat and the rising offset cost, missing/diverged/unreadable cells, and the CLI's exits."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from pretrain.errors import run_tool
from scripts import loop_study
from scripts.study import render, render_answers, stats, tables
from scripts.study.cells import read_cells
from scripts.study.report import build, markdown
from tests.fixtures import REPO, subprocess_env
from tests.study_folders import FLOPS_PER_TOKEN_PER_LOOP, val_loss, write_cell, write_grid

CLP_BEST_AT_2 = {(1, "R1"): 3.0, (2, "clp"): 2.5, (3, "clp"): 2.8, (4, "clp"): 2.9,
                 (2, "noclp"): 2.7, (3, "noclp"): 2.5, (4, "noclp"): 2.3}


def _record(data, size, arm):
    return next(r for r in data["answers"] if r["size"] == size and r["arm"] == arm)


def test_best_r_per_arm_and_the_optimum_moving_past_two_loops(tmp_path):
    write_grid(tmp_path, CLP_BEST_AT_2)
    data = build(str(tmp_path))
    clp, noclp = _record(data, "m", "clp"), _record(data, "m", "noclp")
    assert clp["best_r"]["val_loss"]["best"] == 2 and clp["best_r"]["val_loss"]["resolved"]
    assert noclp["best_r"]["val_loss"]["best"] == 4 and noclp["best_r"]["val_loss"]["resolved"]
    assert noclp["optimum_moves"]["val_loss"]["answer"] == "yes"
    group = next(g for g in data["groups"] if g["loops"] == 2 and g["arm"] == "clp")
    assert group["n_ok"] == 3 and group["val_loss"]["mean"] == pytest.approx(2.5)
    assert group["val_loss"]["std"] == pytest.approx(0.01)
    assert (group["val_loss"]["min"], group["val_loss"]["max"]) == pytest.approx((2.49, 2.51))


def test_an_optimum_that_stays_at_two_loops_without_clp(tmp_path):
    write_grid(tmp_path, {(1, "R1"): 3.0, (2, "clp"): 2.5, (3, "clp"): 2.8, (2, "neutral"): 2.4,
                          (3, "neutral"): 2.6, (4, "neutral"): 2.7})
    moved = _record(build(str(tmp_path)), "m", "neutral")["optimum_moves"]["val_loss"]
    assert moved["answer"] == "no", moved


def test_a_spread_that_swamps_the_difference_is_not_resolved(tmp_path):
    write_grid(tmp_path, {(1, "R1"): 3.0, (2, "clp"): 2.50, (3, "clp"): 2.52, (2, "noclp"): 2.6,
                          (3, "noclp"): 2.55}, noise=0.3)
    data = build(str(tmp_path))
    best = _record(data, "m", "clp")["best_r"]["val_loss"]
    assert best["best"] == 2 and not best["resolved"] and best["tied"] == [1, 2, 3]
    assert best["verdict"].startswith("not resolved at this scale")
    assert _record(data, "m", "noclp")["optimum_moves"]["val_loss"]["answer"] == "not resolved"
    # the same means with one seed each: no spread at all, never resolved
    assert not stats.compare(stats.summarize([2.0]), stats.summarize([3.0]))["resolved"]


def test_the_comparison_rule_needs_disjoint_ranges_and_a_large_welch_t():
    a, b = stats.summarize([1.0, 1.1]), stats.summarize([1.2, 1.3])
    assert stats.compare(a, b)["resolved"]  # disjoint; t = 0.2 / 0.0707 = 2.83
    close = stats.summarize([1.0, 1.3]), stats.summarize([1.31, 1.6])
    assert not stats.compare(*close)["resolved"]  # disjoint, but t = 0.305 / 0.3 < 2
    overlapping = stats.summarize([1.0, 1.2]), stats.summarize([1.1, 1.3])
    assert stats.compare(*overlapping)["why"] == "the seed ranges overlap"
    # the table form of each verdict (se = sqrt(0.045/2 + 0.04205/2) = 0.2086: t = 1.46)
    assert render_answers.short_diff(stats.compare(*close)) == \
        "-0.305 (not beyond: ranges disjoint, Welch t 1.46 <= 2)"
    assert render_answers.short_diff(stats.compare(b, a)) == \
        "+0.2 (beyond: ranges disjoint, Welch t 2.83)"
    assert render_answers.short_diff(stats.compare(*overlapping)).startswith(
        "-0.1 (not beyond: ranges overlap")
    assert render_answers.short_diff(stats.compare(stats.summarize([2.0]), a)) == \
        "+0.95 (not beyond: fewer than 2 seeds (n = 1 and 2))"


def test_interpolation_is_linear_in_log_x_and_never_extrapolates():
    # hand-computed: half way between 1e12 and 4e12 in log is 2e12 -> the mean of 4 and 2
    assert stats.interpolate([1e12, 4e12], [4.0, 2.0], 2e12) == pytest.approx(3.0)
    # plain linear would give 4 - 2 * (1/3) = 3.333: the choice is visible
    assert stats.interpolate([1e12, 4e12], [4.0, 2.0], 2e12) != pytest.approx(10 / 3)
    assert stats.interpolate([1e12, 4e12], [4.0, 2.0], 5e12) is None
    assert stats.interpolate([1e12, 4e12], [4.0, 2.0], 4e12) == 4.0 - 2.0


def test_validation_loss_at_equal_flops_against_a_hand_computed_value(tmp_path):
    write_cell(tmp_path, "r1", loops=1, arm="R1", final=3.0)
    write_cell(tmp_path, "r2", loops=2, arm="clp", final=2.0)
    data = build(str(tmp_path))
    budget = data["budgets"]["m"]
    # R=1's 100 steps: 100 x 8 x 16 tokens x 1e6 FLOPs; R=2 reaches it at step 50
    assert budget["flops"] == pytest.approx(100 * 8 * 16 * FLOPS_PER_TOKEN_PER_LOOP)
    assert budget["tokens"] == 100 * 8 * 16
    r2 = next(g for g in data["groups"] if g["loops"] == 2)
    assert r2["val_at_equal_flops"]["mean"] == pytest.approx(val_loss(2.0, 50, 100))
    assert r2["val_at_equal_tokens"]["mean"] == pytest.approx(2.0)
    r1 = next(g for g in data["groups"] if g["loops"] == 1)
    assert r1["val_at_equal_flops"]["mean"] == pytest.approx(3.0)


def test_without_logged_flops_they_come_from_the_mfu_function(tmp_path):
    from model.config import ModelConfig
    from model.flops import flops_per_token

    write_cell(tmp_path, "r2", loops=2, arm="clp", flops=False)
    cell, = read_cells(str(tmp_path))
    per_token = flops_per_token(ModelConfig(num_loops=2), 16)
    assert not cell.flops_logged
    assert cell.val_curve[-1][1] == pytest.approx(100 * 8 * 16 * per_token)
    data = build(str(tmp_path))
    assert not data["context"]["flops_logged"] and data["context"]["flops_computed"]


def test_spearman_against_hand_computed_values():
    result = stats.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    # sum d^2 = 4: rho = 1 - 6 * 4 / (5 * 24) = 0.8; 8 of the 120 orders reach rho >= 0.8 (the
    # identity, 4 adjacent swaps, 3 pairs of disjoint adjacent swaps), 8 more rho <= -0.8
    assert result["rho"] == pytest.approx(0.8) and result["p"] == pytest.approx(16 / 120)
    assert stats.ranks([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    assert stats.spearman([1, 2], [2, 1])["rho"] is None


def test_the_early_effective_rank_predicts_the_final_ranking(tmp_path):
    # higher early rank for the better R, in every seed: a strong cell-level correlation
    finals = {(1, "R1"): 3.0, (2, "clp"): 2.4, (3, "clp"): 2.6, (4, "clp"): 2.8}
    for (loops, arm), final in finals.items():
        for seed in (1, 2, 3):
            write_cell(tmp_path, f"R{loops}s{seed}", loops=loops, arm=arm, seed=seed,
                       final=final + 0.01 * seed, early_rank=100 - 10 * final - seed * 0.01)
    answer = _record(build(str(tmp_path)), "m", "clp")["early_rank"]
    assert answer["answer"] == "yes" and answer["cells"]["n"] == 12
    assert answer["cells"]["rho"] == pytest.approx(-1.0) and answer["steps"] == [10]
    assert answer["by_r"]["n"] == 4 and "cannot settle it" in answer["note"]


def test_flat_and_rising_offset_cost(tmp_path):
    for seed, jitter in ((1, -0.001), (2, 0.0), (3, 0.001)):
        write_cell(tmp_path, f"clp{seed}", loops=4, arm="clp", seed=seed,
                   offset_cost=0.5 + jitter)
        write_cell(tmp_path, f"neu{seed}", loops=4, arm="neutral", seed=seed,
                   offset_cost=0.2 + jitter, offset_slope=0.2)
    data = build(str(tmp_path))
    flat = _record(data, "m", "clp")["offset_cost"]["across_loops"][4]
    rising = _record(data, "m", "neutral")["offset_cost"]["across_loops"][4]
    assert flat["answer"] == "flat within the seed spread"
    assert rising["answer"] == "not flat" and (2, 4) in rising["differ"]


def test_missing_diverged_stopped_and_unreadable_cells_are_listed_not_averaged(tmp_path):
    write_grid(tmp_path, {(1, "R1"): 3.0, (2, "clp"): 2.5}, seeds=(1, 2, 3))
    write_cell(tmp_path, "m_R3_clp_s1", loops=3, arm="clp", seed=1, final=2.4)
    write_cell(tmp_path, "m_R3_clp_s2", loops=3, arm="clp", seed=2, final=9.0, diverge=True)
    write_cell(tmp_path, "m_R3_clp_s3", loops=3, arm="clp", seed=3, final=9.0, stop_at=50)
    write_cell(tmp_path, "m_R3_noclp_s1", loops=3, arm="noclp", seed=1, last_val_null=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("model: [unclosed\n")
    data = build(str(tmp_path))
    statuses = {os.path.basename(c.folder): c.status for c in data["cells"]}
    assert statuses["m_R3_clp_s2"] == "diverged" and statuses["m_R3_clp_s3"] == "stopped early"
    assert statuses["broken"] == "unreadable config"
    assert statuses["m_R3_noclp_s1"] == "diverged"
    r3 = next(g for g in data["groups"] if g["loops"] == 3)
    assert (r3["found"], r3["n_ok"], r3["val_loss"]["mean"]) == (3, 1, pytest.approx(2.4))
    # the noclp arm exists (one R=3 cell), so each of its R x seed cells is expected
    assert set(data["missing"]) == {("m", 3, "noclp", 2), ("m", 3, "noclp", 3),
                                    *{("m", 2, "noclp", seed) for seed in (1, 2, 3)}}
    text = render.problems(data["cells"], data["missing"])
    assert len([line for line in text if "| m | 3 |" in line]) == 5  # 3 listed + 2 missing
    os.remove(tmp_path / "m_R2_clp_s2" / "metrics.jsonl")
    os.remove(tmp_path / "m_R2_clp_s2" / "config.yaml")
    os.rmdir(tmp_path / "m_R2_clp_s2")
    data = build(str(tmp_path))
    assert ("m", 2, "clp", 2) in data["missing"]
    # an R with no finished cell is named in the answer, never dropped in silence
    write_cell(tmp_path, "m_R4_clp_s1", loops=4, arm="clp", seed=1, diverge=True)
    best = _record(build(str(tmp_path)), "m", "clp")["best_r"]["val_loss"]
    assert best["absent"] == [4] and "no value for R=4" in best["verdict"]


def _run(argv):
    return run_tool(loop_study.main, argv)


def test_the_cli_writes_the_report_and_rewrites_it_the_same(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_grid(runs, CLP_BEST_AT_2, seeds=(1, 2))
    write_cell(runs, "diverged", loops=3, arm="noclp", seed=3, diverge=True)
    done = subprocess.run([sys.executable, "-m", "scripts.loop_study", "report", str(runs)],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(os.listdir(runs))
    assert {"report.md", "report.json", "val_loss_m.png", "effective_rank_m.png"} <= set(names)
    text = (runs / "report.md").read_text()
    assert "not a claim about 7B models" in text and "equal TOKENS" in text
    assert "diverged" in text and "missing" in text  # seed 3 of every other cell is missing
    first = (runs / "report.json").read_text()
    record = json.loads(first)
    assert record["stability"]["groups"] == 2  # clp and noclp, each with R=1
    assert all("ranking_stability" in answer for answer in record["answers"])
    assert _run(["report", str(runs)]) == 0
    assert (runs / "report.json").read_text() == first
    assert not [n for n in os.listdir(runs) if n.endswith(".tmp") or ".tmp." in n]


def test_the_cli_refuses_what_it_cannot_read_or_must_not_write(tmp_path, capsys):
    assert _run(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _run(["report", str(tmp_path / "empty")]) == 2
    assert "holds no run folder" in capsys.readouterr().err
    cell = write_cell(tmp_path / "runs", "cell")
    assert _run(["report", str(tmp_path / "runs"), "--out", os.path.join(cell, "rep")]) == 2
    assert "lies in the run folder" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(cell, "rep"))
    assert _run(["report", cell]) == 2  # one run is not a study
    assert "is itself a run folder" in capsys.readouterr().err
    assert _run(["report", str(tmp_path / "runs"), "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert _run(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "file")]) == 2
    out = tmp_path / "elsewhere"
    assert _run(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert (out / "report.md").exists() and not (tmp_path / "runs" / "report.md").exists()
    with pytest.raises(SystemExit) as exit_:
        _run(["nosuchcommand"])
    assert exit_.value.code == 2


def test_sizes_are_read_from_the_config_smallest_first_and_split_by_shape(tmp_path):
    # two shapes under one preset name (sizes set by overrides), and a folder name that lies
    for i, (hidden, final) in enumerate(((128, 2.0), (64, 2.5))):
        folder = write_cell(tmp_path, f"plt_7b_R3_noclp_s9_{i}", size="plt_tiny", loops=2,
                            final=final)
        config = yaml.safe_load(open(os.path.join(folder, "config.yaml")))
        config["model"].update(hidden_size=hidden, num_attention_heads=4, num_query_groups=2)
        yaml.safe_dump(config, open(os.path.join(folder, "config.yaml"), "w"))
    cells = read_cells(str(tmp_path))
    assert {(c.loops, c.arm, c.seed, c.status) for c in cells} == {(2, "clp", 1, "ok")}
    assert tables.sizes(cells) == ["plt_tiny-L4-h64-ffn640-heads4-kv2-V4096",
                                   "plt_tiny-L4-h128-ffn640-heads4-kv2-V4096"]
    small = min(cells, key=lambda c: c.parameters["total"])
    assert small.model["hidden_size"] == 64 and small.parameters["non_embedding"] > 0


def test_ranking_stability_between_the_last_two_evaluations(tmp_path):
    # clp: R=3 is ahead at the second-to-last evaluation (shifted down by 0.4) and behind at the
    # last; noclp: the curves never cross. R=1 is in both rankings.
    write_grid(tmp_path, {(1, "R1"): 3.0, (2, "clp"): 2.5, (2, "noclp"): 2.6, (3, "noclp"): 2.4})
    write_grid(tmp_path, {(3, "clp"): 2.7}, second_last_shift=-0.4)
    # a finished R=4 run with one evaluation only: named, never ranked
    write_cell(tmp_path, "short", loops=4, arm="noclp", max_steps=10, final=2.0)
    data = build(str(tmp_path))
    flipped = _record(data, "m", "clp")["ranking_stability"]
    assert flipped["previous"] == [3, 2, 1] and flipped["last"] == [2, 3, 1]
    assert flipped["changed"] and flipped["swapped"] == [(2, 3)]
    assert flipped["tokens"] == [[90 * 8 * 16], [100 * 8 * 16]]
    stable = _record(data, "m", "noclp")["ranking_stability"]
    assert stable["previous"] == stable["last"] == [3, 2, 1] and not stable["changed"]
    assert stable["absent"] == [4] and "no two evaluations for R=4" in stable["verdict"]
    assert data["stability"]["changed"] == 1 and data["stability"]["groups"] == 2
    assert "changed between the last two evaluations in 1 of 2 size x arm groups: the runs are " \
           "not long enough" in data["stability"]["verdict"]
    text = markdown(data, [])
    answers = text[text.index("## Answers"):]
    assert answers.splitlines()[2].startswith("**Ranking stability: the ranking of R changed")
    assert "| m | clp | R=3 < R=2 < R=1 (1.152e+04) | R=2 < R=3 < R=1 (1.28e+04) | **changed** " \
           "| R=2 passed R=3 |" in text


def test_the_summary_and_the_answer_tables_say_what_the_numbers_resolve(tmp_path):
    write_grid(tmp_path / "clear", CLP_BEST_AT_2)
    text = markdown(build(str(tmp_path / "clear")), [])
    summary = text[text.index("## What this grid says"):text.index("## Method")]
    assert "m, clp: R=2 is the best R beyond the seed spread at equal tokens" in summary
    assert "m, noclp: R=4 is the best R beyond the seed spread at equal tokens" in summary
    assert "Removing CLP moves the optimum past two loops beyond the seed spread for m noclp " \
           "at equal tokens" in summary
    assert "runs are long enough for a stable ranking" in summary
    # (a) as a table row per size x arm: best, resolved, runner-up with its gap and verdict
    row = next(line for line in text.splitlines() if line.startswith("| m | clp | R=2 | yes |"))
    assert "| R=3 | +0.3 (beyond: ranges disjoint, Welch t 36.74) | - |" in row
    assert "R=3 vs R=2: +0.3 (exceeds the seed spread: ranges disjoint and Welch t > 2" in text
    assert "<summary>Every pairwise comparison behind (a)</summary>" in text
    write_grid(tmp_path / "noisy", {(1, "R1"): 3.0, (2, "clp"): 2.50, (3, "clp"): 2.52},
               noise=0.3)
    summary = markdown(build(str(tmp_path / "noisy")), [])
    summary = summary[:summary.index("## Method")]
    assert "- **Best R.** Not resolved at this scale in 3 of 3 size x arm x metric comparisons " \
           "(all of them)" in summary and "beyond the seed spread at" not in summary


def test_the_paired_rule_against_hand_computed_values():
    # mean 0.2, s 0.1: t = 0.2 / (0.1 / sqrt 3) = 3.46, below Student's 4.303 for 2 df
    spread = stats.paired([0.1, 0.2, 0.3])
    assert spread["t"] == pytest.approx(0.2 / (0.1 / 3 ** 0.5)) and spread["t_critical"] == 4.303
    assert spread["one_sign"] and not spread["resolved"]
    tight = stats.paired([0.19, 0.2, 0.21])  # t = 0.2 / (0.01 / sqrt 3) = 34.6
    assert tight["resolved"] and tight["difference"] == pytest.approx(0.2)
    assert stats.paired([-0.1, 0.2, 0.5])["why"] == "the per-seed differences change sign"
    assert not stats.paired([0.5, 0.6, 0.7, 0.8, 100.0])["resolved"]  # t 1.13 < 2.776
    assert stats.paired([0.3])["why"] == "fewer than 2 seeds with both cells (n = 1)"
    assert stats.paired([0.5, 0.51])["t_critical"] == 12.706
    assert stats.t_critical(40) == 2.042  # past the table: the df = 30 value, a little strict


def _pair_cells(root, gaps, neutral=2.0, seed_noise=0.3, jitter=0.005):
    """clp and neutral cells at each R: seed i moves both arms by (i - 2) x seed_noise (what one
    seed index shares), and the clp cell by a further (i - 2) x jitter."""
    for loops, gap in gaps.items():
        for seed in (1, 2, 3):
            shared = neutral + (seed - 2) * seed_noise
            write_cell(root, f"m_R{loops}_neutral_s{seed}", loops=loops, arm="neutral",
                       seed=seed, final=shared)
            write_cell(root, f"m_R{loops}_clp_s{seed}", loops=loops, arm="clp", seed=seed,
                       final=shared + gap + (seed - 2) * jitter)


def test_the_mismatch_gap_paired_by_seed_is_resolved_where_the_seed_noise_hides_it(tmp_path):
    # a 0.1 gap at every R under a seed noise of 0.3: unpaired, the arms cannot be told apart;
    # paired, the gap is 0.1 in every seed (jitter 0): positive at every R, the same at every R
    _pair_cells(tmp_path, {2: 0.1, 3: 0.1, 4: 0.1}, jitter=0.0)
    data = build(str(tmp_path))
    clp, neutral = (next(g for g in data["groups"] if g["loops"] == 2 and g["arm"] == arm)
                    for arm in ("clp", "neutral"))
    assert not stats.compare(clp["val_loss"], neutral["val_loss"])["resolved"]
    answer = next(r for r in data["mismatch"] if r["metric"] == "val_loss")
    assert all(g["resolved"] and g["difference"] == pytest.approx(0.1)
               for g in answer["per_r"].values())
    assert answer["answer"] == "fixed within the spread", answer["verdict"]
    assert [(d["a"], d["b"], d["why"]) for d in answer["between_r"]] == \
        [(2, 3, "zero in every seed"), (2, 4, "zero in every seed"), (3, 4, "zero in every seed")]
    text = markdown(data, [])
    assert "- **Mismatch cost.** The gap of CLP over the neutralized arm, paired by seed, is " \
           "positive beyond the seed spread for m validation loss at R=2, 3, 4; m HumanEval NLL " \
           "at R=2, 3, 4; is the same at every R within the spread (consistent with a fixed " \
           "cost) for m validation loss, m HumanEval NLL; is not resolved at this scale in 0 of " \
           "2 size x metric answers." in text


def test_a_mismatch_gap_that_shrinks_with_r_is_not_a_fixed_cost(tmp_path):
    _pair_cells(tmp_path, {2: 0.3, 3: 0.2, 4: 0.1})
    answer = next(r for r in build(str(tmp_path))["mismatch"] if r["metric"] == "val_loss")
    assert answer["answer"] == "not fixed"
    shrink = {(d["a"], d["b"]): d for d in answer["between_r"]}
    # gap_3 - gap_2 per seed: -0.1 exactly (the jitter is the same at every R): resolved
    assert shrink[2, 3]["resolved"] and shrink[2, 3]["difference"] == pytest.approx(-0.1)
    assert "the gap at R=4 is 0.2 smaller than at R=2" in answer["verdict"]
    # one seed of R=4 without its neutral cell: that R is compared on the two seeds it has
    os.remove(tmp_path / "m_R4_neutral_s3" / "metrics.jsonl")
    data = build(str(tmp_path))
    answer = next(r for r in data["mismatch"] if r["metric"] == "val_loss")
    assert answer["per_r"][4]["seeds"] == [1, 2] and answer["per_r"][4]["t_critical"] == 12.706
    row = next(line for line in markdown(data, []).splitlines()
               if line.startswith("| m | final validation loss |"))
    assert "+0.2 ± 0.005 (beyond: one sign, t 69.28 > 4.303, n = 3)" in row


def test_a_negative_gap_is_named_and_an_infinite_t_survives_in_the_json(tmp_path):
    _pair_cells(tmp_path, {2: -0.25, 3: -0.25}, seed_noise=0.25, jitter=0.0)  # exact in binary
    data = build(str(tmp_path))
    answer = next(r for r in data["mismatch"] if r["metric"] == "val_loss")
    assert answer["answer"] == "CLP better at every R", answer["verdict"]
    summary = markdown(data, [])
    assert "is negative (CLP's loss lower) beyond the seed spread for m validation loss at R=2, 3" \
        in summary and "is negative at every R beyond the spread (no mismatch cost) for m " \
        "validation loss" in summary
    assert answer["per_r"][2]["t"] == float("inf")  # std 0: t is infinite, not missing
    runs = tmp_path / "report"
    loop_study.main(["report", str(tmp_path), "--out", str(runs)])
    saved = json.loads((runs / "report.json").read_text())
    gap = next(r for r in saved["mismatch"] if r["metric"] == "val_loss")["per_r"]["2"]
    assert gap["t"] == "inf" and gap["resolved"]


def test_without_a_neutral_arm_the_mismatch_question_is_not_answered(tmp_path):
    write_grid(tmp_path, CLP_BEST_AT_2)
    data = build(str(tmp_path))
    assert data["mismatch"] == []
    assert "No size has both a clp and a neutral arm: not answered." in markdown(data, [])
