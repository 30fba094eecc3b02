"""The run and sweep plots read runs through their files (docs/run_folder.md) and
write PNGs with the numbers printed beside them; the loop-sweep experiment lists its six runs."""

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from scripts import plot_run, plot_sweep
from tests.fixtures import REPO, small_data, subprocess_env
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, num_loops, clp=True, steps=(10, 20, 30), clp_offset=1):
    """A run folder in the contract's format: config.yaml and metrics.jsonl (train, valid, loop rows)."""
    os.makedirs(run_dir)
    config = {"model": {"num_loops": num_loops, "clp": clp, "clp_offset": clp_offset},
              "train": {"seq_length": 128}}
    OmegaConf.save(OmegaConf.create(config), os.path.join(run_dir, "config.yaml"))
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as stream:
        for step in steps:
            row = {"step": step, "consumed_samples": 8 * step, "loss": 8.0 - step / 10 - num_loops / 10,
                   "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1000.0}
            if step == steps[-1]:
                row["val_loss"] = row["loss"] + 0.1
            stream.write(json.dumps(row) + "\n")
            for loop in range(1, num_loops + 1):
                diag = {"step": step, "loop": loop, "step_size": 1.0 * loop, "effective_rank": 20.0}
                if loop >= 2:
                    diag.update(offset_cost=50.0 + loop, output_shift=1.0 / loop ** 2,
                                angular_change=-0.2, gate_mean=0.5)
                stream.write(json.dumps(diag) + "\n")


def _is_png(path):
    with open(path, "rb") as stream:
        return stream.read(8) == PNG_MAGIC


def test_plot_run_writes_a_png_and_prints_the_last_diagnostics(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    _write_run(run_dir, num_loops=3)
    out = plot_run.main([run_dir])
    assert out == os.path.join(run_dir, "run.png") and _is_png(out)
    printed = capsys.readouterr().out
    assert "final loss 4.7" in printed and "final valid loss 4.8" in printed
    assert "diagnostics at step 30" in printed and "0.1111" in printed  # loop 3's output shift


def test_plot_sweep_labels_runs_by_loops_and_clp(tmp_path, capsys):
    runs = []
    for loops, clp in ((1, True), (2, True), (3, True), (2, False)):
        runs.append(str(tmp_path / f"r{loops}_{clp}"))
        _write_run(runs[-1], loops, clp)
    out = plot_sweep.main(runs + ["--out", str(tmp_path / "sweep.png")])
    assert _is_png(out)
    lines = capsys.readouterr().out.splitlines()
    labels = [line.split()[0] + (" clp=off" if "clp=off" in line else "") for line in lines[1:5]]
    assert labels == ["R=1", "R=2", "R=2 clp=off", "R=3"]  # sorted by R, the control after its R
    assert "2: 52 / 0.25  3: 53 / 0.1111" in lines[4]  # offset cost / output shift per loop


def test_plot_sweep_labels_the_neutralized_arm(tmp_path, capsys):
    runs = [str(tmp_path / name) for name in ("neutral", "clp")]
    _write_run(runs[0], 2, clp_offset=0)
    _write_run(runs[1], 2)
    plot_sweep.main(runs + ["--out", str(tmp_path / "sweep.png")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0].strip() for line in lines[1:3]] == ["R=2", "R=2 clp_offset=0"]


def _sweep_jobs(*command_line):
    """The jobs `python -m pretrain.train -m +experiment=loop_sweep ...` would launch, as Hydra's basic
    sweeper builds them (its params first, the command line's sweeps replacing the same keys)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pretrain.config import register

    register()  # the schema the defaults list names

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base=None):
        cfg = compose("config", overrides=["+experiment=loop_sweep"], return_hydra_config=True)
        params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()] + list(command_line)
        overrides = OverridesParser.create().parse_overrides(params)
        jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
        # Each job's config must compose against the schema (a typo'd key would fail here).
        composed = [compose("config", overrides=["+experiment=loop_sweep", *job]) for job in jobs]
    return [(c.model.num_loops, c.model.clp) for c in composed]


def test_loop_sweep_runs_r1_to_r4_and_the_clp_controls_in_one_command():
    assert _sweep_jobs() == [(1, True), (2, True), (3, True), (4, True), (2, False), (3, False)]
    # Cut from the command line:
    assert _sweep_jobs("+loop_variant=R2,R3_noclp") == [(2, True), (3, False)]


@pytest.mark.slow
def test_plots_of_a_real_two_run_sweep(tmp_path, capsys):
    tiny = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
            "model.num_query_groups=2", "model.ffn_hidden_size=128", "train.max_steps=4",
            "train.seq_length=64", "train.global_batch_size=2", "train.micro_batch_size=2",
            "train.warmup_steps=1", "logging.interval=2", "eval.interval=4", "diagnostics.interval=2",
            "checkpoint.interval=0", "checkpoint.save_final=false", "logging.wandb.mode=disabled",
            "sample.max_new_tokens=0"]
    sweep_dir = tmp_path / "sweep"
    # The loop-sweep experiment cut to two variants by a command-line sweep (which wins over its own).
    result = subprocess.run([sys.executable, "-m", "pretrain.train", "-m", "+experiment=loop_sweep",
                             f"run_dir={sweep_dir}", "+loop_variant=R1,R2", *tiny, *small_data()],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(str(p.parent) for p in sweep_dir.glob("*/metrics.jsonl"))
    assert [os.path.basename(r) for r in runs] == ["R1_clp_True", "R2_clp_True"]
    # The trainer logged the loop diagnostics: one row per loop at steps 2 and 4.
    with open(os.path.join(runs[1], "metrics.jsonl")) as stream:
        rows = [json.loads(line) for line in stream]
    loop_rows = [(r["step"], r["loop"]) for r in rows if "loop" in r]
    assert loop_rows == [(2, 1), (2, 2), (4, 1), (4, 2)]
    assert all("output_shift" in r for r in rows if r.get("loop") == 2)
    assert _is_png(plot_run.main([runs[1]]))
    assert _is_png(plot_sweep.main(runs + ["--out", str(tmp_path / "sweep.png")]))
    printed = capsys.readouterr().out
    assert "R=1" in printed and "R=2" in printed and "final valid loss" in printed
