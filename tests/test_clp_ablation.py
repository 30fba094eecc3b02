"""The CLP ablation grid (conf/experiment/clp_ablation.yaml, pretrain/study.py): the cells it runs,
their folders, what varies between them, the command line users type, and the SLURM rendering."""

import pytest
import torch
from omegaconf import OmegaConf

from launch.slurm import declared_sweep, expand_sweep, main, plan, sweep_subdir
from model import ConfigError, PLTModel
from pretrain.config import compose
from pretrain.study import clp_arm, sweep_seeds, sweep_sizes
from tests.fixtures import output_of, read_diagnostics, read_metrics, run_trainer, small_data

EXPERIMENT = "+experiment=clp_ablation"
VARIANTS = ["R1", "R2", "R3", "R4", "R2_noclp", "R3_noclp", "R4_noclp", "R2_neutral", "R3_neutral",
            "R4_neutral"]


def _cells(*overrides):
    return expand_sweep([EXPERIMENT, *overrides], declared_sweep([EXPERIMENT, *overrides]))


def _knobs(cell):
    return {o.split("=")[0]: o.split("=")[1] for o in cell if not o.startswith("+experiment")}


def test_the_default_grid_is_three_sizes_ten_variants_three_seeds_seed_outermost():
    cells = _cells()
    assert len(cells) == 3 * 10 * 3
    knobs = [_knobs(c) for c in cells]
    assert [k["train.seed"] for k in knobs[::30]] == ["1", "2", "3"]
    assert [k["model"] for k in knobs[:30:10]] == ["study_xs", "study_s", "study_m"]
    assert [k["+loop_variant"] for k in knobs[:10]] == VARIANTS


def test_users_change_sizes_seeds_and_variants_on_the_command_line():
    cells = _cells("study.sizes=[study_s,study_m]", "study.seeds=2", "+loop_variant=R1,R3_neutral")
    assert [(k["train.seed"], k["model"], k["+loop_variant"]) for k in map(_knobs, cells)] == [
        (seed, size, variant) for seed in "12" for size in ("study_s", "study_m")
        for variant in ("R1", "R3_neutral")]


@pytest.mark.parametrize("seeds", [0, -1, True])
def test_a_seed_count_below_one_is_refused(seeds):
    with pytest.raises(ConfigError, match=r"study\.seeds=.*integer >= 1"):
        sweep_seeds(seeds)


def test_sizes_must_name_presets():
    assert sweep_sizes(["study_xs", "study_m"]) == "study_xs,study_m"
    for bad in ([], ["a,b"], ["x=y"]):
        with pytest.raises(ConfigError, match=r"study\.sizes="):
            sweep_sizes(bad)


def test_every_cell_has_its_own_parseable_folder():
    assert [clp_arm(1, True, 1), clp_arm(2, True, 1), clp_arm(3, False, 1), clp_arm(4, "true", 0),
            clp_arm(2, "False", 0)] == ["base", "clp", "noclp", "neutral", "noclp"]
    cell = [EXPERIMENT, "train.seed=2", "model=study_s", "+loop_variant=R3_neutral"]
    assert sweep_subdir(cell, 17) == "study_s_R3_neutral_s2"


def test_cells_of_a_seed_index_differ_only_in_the_studied_knobs():
    configs = [OmegaConf.to_container(compose(c), resolve=True)
               for c in _cells("study.sizes=[study_s]", "study.seeds=1")]
    studied = {"num_loops", "clp", "clp_offset"}
    reference = configs[0]
    for config in configs[1:]:
        for node, values in config.items():
            for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
                if node == "model" and key in studied:
                    continue
                expected = reference[node][key] if key is not None else reference[node]
                assert value == expected, (node, key)
    arms = {(c["model"]["num_loops"], c["model"]["clp"], c["model"]["clp_offset"]) for c in configs}
    assert arms == {(1, True, 1)} | {(r, clp, offset) for r in (2, 3, 4)
                                     for clp, offset in ((True, 1), (False, 1), (True, 0))}
    run = configs[0]
    assert run["train"]["max_steps"] % run["eval"]["interval"] == 0
    assert run["train"]["max_steps"] // run["eval"]["interval"] >= 4  # >= 4 validation points
    assert run["train"]["max_steps"] % run["eval"]["code"]["interval"] == 0


@pytest.mark.usefixtures("megatron_world")
def test_every_variant_of_a_seed_index_starts_from_the_same_weights():
    """The trainer seeds megatron's RNG with train.seed (pretrain/distributed.py) and then builds
    the model; the loop knobs decide no initial value (R=1 only lacks the gates)."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    states = {}
    for variant in ("R1", "R2", "R4_noclp", "R3_neutral"):
        config = compose(["model=study_xs", f"+loop_variant={variant}"])
        model_cfg = OmegaConf.to_object(config).model
        model_parallel_cuda_manual_seed(7)
        states[variant] = PLTModel(model_cfg.build()).state_dict()
    for variant, state in states.items():
        for key, value in states["R1"].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, state[key]), (variant, key)
    model_parallel_cuda_manual_seed(1234)  # the megatron_world fixture's seed, for later tests


def test_the_slurm_launcher_renders_one_job_per_cell_in_the_same_folders(tmp_path, capsys):
    jobs = plan(["launch=cpu", EXPERIMENT, "study.sizes=[study_xs]", "study.seeds=2",
                 "+loop_variant=R1,R4_noclp", f"run_dir={tmp_path}"], check_cluster=False)
    names = ["study_xs_R1_base_s1", "study_xs_R4_noclp_s1", "study_xs_R1_base_s2",
             "study_xs_R4_noclp_s2"]
    assert [j.spec.run_dir for j in jobs] == [str(tmp_path / n) for n in names]
    for job, seed, variant in zip(jobs, "1122", ["R1", "R4_noclp"] * 2):
        overrides = job.spec.train_overrides
        assert f"train.seed={seed}" in overrides and f"+loop_variant={variant}" in overrides
        assert "model=study_xs" in overrides and EXPERIMENT in overrides
    assert main(["submit", "launch=cpu", EXPERIMENT, "study.sizes=[study_xs]", "study.seeds=1",
                 "+loop_variant=R2,R2_neutral", f"run_dir={tmp_path}", "--dry-run"]) == 0
    dry = capsys.readouterr()
    assert "# ---- job 2/2: loopcoder-study_xs_R2_neutral_s1" in dry.out


def test_the_grid_runs_as_users_type_it_and_a_rerun_skips_finished_cells(tmp_path):
    command = [EXPERIMENT, "study.sizes=[study_xs]", "study.seeds=1", "+loop_variant=R2_neutral",
               "model.vocab_size=640", *small_data(), "train.max_steps=4", "train.warmup_steps=1",
               "eval.interval=1", "diagnostics.interval=2", "eval.code.interval=4",
               "eval.code.problems=2", "eval.batches=2"]  # the small corpus holds 5 batches
    result = run_trainer(tmp_path, *command, multirun=True, timeout=600)
    assert result.returncode == 0, output_of(result)
    logged = {}
    for name, loops in (("study_xs_R2_neutral_s1", 2),):
        folder = tmp_path / name
        saved = OmegaConf.load(folder / "config.yaml")
        assert (saved.model.name, saved.model.num_loops, saved.train.seed) == ("study_xs", loops, 1)
        assert (saved.model.clp, saved.model.clp_offset) == (True, 0)
        rows = logged[name] = read_metrics(folder)
        assert [r["step"] for r in rows if "val_loss" in r] == [1, 2, 3, 4]
        assert "humaneval_nll" in rows[-1] and rows[-1]["tokens"] == 4 * 8 * 128
        assert rows[-1]["train_flops"] > 0
        assert {(r["step"], r["loop"]) for r in read_diagnostics(folder)} == {
            (step, loop) for step in (2, 4) for loop in range(1, loops + 1)}
    again = run_trainer(tmp_path, *command, multirun=True, timeout=600)
    assert again.returncode == 0, output_of(again)
    assert output_of(again).count("resumed from") == 1
    for name, rows in logged.items():
        assert read_metrics(tmp_path / name) == rows  # nothing trained again


def test_a_diverged_cell_does_not_stop_the_grid(tmp_path):
    """Both cells diverge (NaN losses injected from step 1); each is logged as diverged with its
    skipped steps in its folder, and the sweep reaches its last cell."""
    result = run_trainer(tmp_path, EXPERIMENT, "study.sizes=[study_xs]", "study.seeds=1",
                         "+loop_variant=R1,R2_neutral", "model.vocab_size=640", *small_data(),
                         "train.max_steps=4", "train.warmup_steps=1", "train.max_skipped_steps=1",
                         "debug.nan_loss_at_steps=[1,2]", "eval.interval=0",
                         "diagnostics.interval=0", "eval.code.interval=0", multirun=True)
    assert result.returncode == 0, output_of(result)
    assert output_of(result).count("the sweep goes on with its next job") == 2
    for name in ("study_xs_R1_base_s1", "study_xs_R2_neutral_s1"):
        rows = read_metrics(tmp_path / name)
        assert [(r["step"], r.get("skipped")) for r in rows] == [(1, True), (2, True)]
