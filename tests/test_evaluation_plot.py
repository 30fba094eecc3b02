"""The loop sweep's plot shows the code metric per R: runs whose metrics.jsonl carry humaneval_nll
rows (the trainer's eval.code) get a third panel, and the table their last value."""

import json
import os
import struct

from omegaconf import OmegaConf

from scripts import plot_sweep


def _write_run(run_dir, num_loops, code_nll=None):
    os.makedirs(run_dir)
    OmegaConf.save(OmegaConf.create({"model": {"num_loops": num_loops, "clp": True},
                                     "train": {"seq_length": 128}}),
                   os.path.join(run_dir, "config.yaml"))
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as stream:
        for step in (10, 20):
            stream.write(json.dumps({"step": step, "consumed_samples": 8 * step, "loss": 5.0,
                                     "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1.0}) + "\n")
            if code_nll is not None:  # a row of its own, as evaluate_code returns it
                stream.write(json.dumps({"step": step, "humaneval_nll": code_nll + 10 / step,
                                         "humaneval_bits": 1000.0, "humaneval_tokens": 300,
                                         "humaneval_pass@1": 0.0}) + "\n")


def _png_width(path):
    with open(path, "rb") as stream:
        header = stream.read(24)
    return struct.unpack(">I", header[16:20])[0]


def test_the_sweep_plot_shows_the_code_metric_per_loop_count(tmp_path, capsys):
    runs = [str(tmp_path / f"R{r}") for r in (1, 2)]
    _write_run(runs[0], 1, code_nll=3.0)
    _write_run(runs[1], 2, code_nll=2.5)
    out = plot_sweep.main(runs + ["--out", str(tmp_path / "sweep.png")])
    lines = capsys.readouterr().out.splitlines()
    assert "code nll" in lines[0] and "pass@1" in lines[0]
    assert lines[1].split()[:4] == ["R=1", "5", "-", "3.5"]  # the last step's value: 3.0 + 10/20
    assert lines[2].split()[:5] == ["R=2", "5", "-", "3", "0"]
    assert _png_width(out) == 1650  # three panels (16.5 in at 100 dpi)


def test_runs_without_code_evaluation_keep_the_two_panels(tmp_path, capsys):
    run = str(tmp_path / "R2")
    _write_run(run, 2)
    out = plot_sweep.main([run, "--out", str(tmp_path / "sweep.png")])
    assert _png_width(out) == 1100
    assert capsys.readouterr().out.splitlines()[1].split()[:5] == ["R=2", "5", "-", "-", "-"]
