"""Loop diagnostics (docs/spec.md#loop-diagnostics): each metric on hand-built tensors with a
known answer, then the whole pass on a small real model.

Tolerance: 1e-5 absolute on O(1) float32 results (one reduction each; room for summation order).
"""

import json
import math

import pytest
import torch

from model import diagnostics as D
from tests.fixtures import build_small, small_model_config

pytestmark = pytest.mark.usefixtures("megatron_world")

TOL = dict(rel=0, abs=1e-5)


def _basis(d=8):
    return torch.eye(d)


def test_orthogonal_updates_have_zero_angular_change():
    e = _basis()
    h0, h1, h2 = torch.zeros(5, 8), e[0].expand(5, 8), (e[0] + e[1]).expand(5, 8)
    assert D.angular_change(h2, h1, h0) == pytest.approx(0.0, **TOL)


def test_reversed_updates_have_angular_change_minus_one():
    e = _basis()
    h0, h1 = torch.zeros(5, 8), (2 * e[3]).expand(5, 8)
    assert D.angular_change(h0, h1, h0) == pytest.approx(-1.0, **TOL)  # back where it started


def test_step_size_is_the_mean_token_norm_of_the_update():
    torch.manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(6, 3, 16), dim=-1)
    h_prev = torch.randn(6, 3, 16)
    assert D.step_size(h_prev + 3.0 * direction, h_prev) == pytest.approx(3.0, **TOL)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_effective_rank_of_k_equal_singular_values_is_k(k):
    rows = _basis(16)[:k].repeat(4, 1)  # 4k tokens on k orthogonal directions, equal norms
    assert D.effective_rank(rows) == pytest.approx(k, rel=1e-4)


def test_effective_rank_ignores_token_scale():
    # RMS normalisation first: scaling one token must not change the diversity measure.
    rows = _basis(16)[:4].clone()
    rows[0] *= 100.0
    assert D.effective_rank(rows) == pytest.approx(4, rel=1e-4)


def test_offset_cost_follows_the_sequence_not_the_batch():
    v = torch.nn.functional.normalize(torch.randn(8), dim=0)
    positions = torch.arange(10.0)[:, None, None]  # [seq, 1, 1]
    h = positions * torch.stack([1.0 * v, 3.0 * v])[None]  # two sequences with steps 1 and 3
    assert D.offset_cost(h) == pytest.approx(2.0, **TOL)


def test_kl_of_identical_logits_is_zero_and_known_otherwise():
    logits = torch.randn(7, 2, 50)
    assert D.kl_divergence(logits, logits + 4.0).abs().max().item() < 1e-6  # shift-invariant
    p, q = torch.tensor([0.0, math.log(3.0)]), torch.zeros(2)  # p = (1/4, 3/4), q = (1/2, 1/2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert D.kl_divergence(p, q).item() == pytest.approx(expected, **TOL)


@pytest.mark.parametrize("window", [None, 3])
def test_uniform_attention_entropy_counts_the_visible_keys(window):
    seq, positions = 12, torch.tensor([0, 2, 7, 11])
    q, k = torch.zeros(seq, 4, 8), torch.randn(seq, 2, 8)  # zero queries: uniform over visible keys
    log_probs = D.attention_log_probs(q, k, positions, window, softmax_scale=None)
    visible = [min(i, window if window is not None else i) + 1 for i in positions.tolist()]
    expected = sum(math.log(n) for n in visible) / len(visible)
    assert D.attention_entropy(log_probs) == pytest.approx(expected, **TOL)
    assert D.attention_kl(log_probs, log_probs) == pytest.approx(0.0, **TOL)


def _ids(batch=2, seq=24):
    return torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(3))


def test_model_pass_gives_one_finite_row_per_loop_and_gate_one_half_at_init():
    model = build_small(num_loops=3, randomize_gate=False, swa_window=4).train()
    rows = D.compute_loop_diagnostics(model, _ids(), attention_queries=8)
    assert [row["loop"] for row in rows] == [1, 2, 3]
    defined_from = {"angular_change": 2, "offset_cost": 2, "output_shift": 2, "gate_mean": 2,
                    "attention_kl_global": 2, "attention_entropy_local": 2, "attention_kl_local": 3}
    for row in rows:
        for name in D.METRICS:
            present = row["loop"] >= defined_from.get(name, 1)
            assert (row[name] is not None) == present, (row["loop"], name)
            assert not present or math.isfinite(row[name]), (row["loop"], name, row[name])
    assert [row["gate_mean"] for row in rows[1:]] == [pytest.approx(0.5, **TOL)] * 2
    # Hooks removed and the training mode restored: the trainer calls this mid-run.
    assert model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_query_gate_mean_is_recorded_too():
    rows = D.compute_loop_diagnostics(build_small(num_loops=2, gate_input="query",
                                                  randomize_gate=False), _ids(), attention_queries=0)
    assert rows[0]["gate_mean"] is None and rows[1]["gate_mean"] == pytest.approx(0.5, **TOL)


def test_ungated_model_has_no_gate_mean():
    rows = D.compute_loop_diagnostics(build_small(num_loops=2, shared_kv=False), _ids(),
                                      attention_queries=0)
    assert rows[1]["gate_mean"] is None and rows[1]["output_shift"] > 0
    assert rows[1]["attention_entropy_global"] is None  # attention metrics skipped


def test_metrics_rows_are_json_with_step_and_loop():
    rows = [{"loop": 1, "step_size": 2.0, "offset_cost": None}, {"loop": 2, "offset_cost": 1.5}]
    flat = D.flatten_for_metrics(rows, step=40)
    assert json.loads(json.dumps(flat)) == [{"step": 40, "loop": 1, "step_size": 2.0},
                                            {"step": 40, "loop": 2, "offset_cost": 1.5}]
    assert D.scalars_for_wandb(rows) == {"diagnostics/loop1/step_size": 2.0,
                                         "diagnostics/loop2/offset_cost": 1.5}


def test_diagnose_script_reads_a_checkpoint_folder(tmp_path):
    # A checkpoint in the trainer's layout (pretrain/checkpoint/), model part only.
    from dataclasses import asdict

    from megatron.core import dist_checkpointing
    from omegaconf import OmegaConf

    from scripts import diagnose

    model = build_small(num_loops=2)
    folder = tmp_path / "checkpoints" / "iter_0000010"
    folder.mkdir(parents=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(folder),
                            sharded_strategy=("torch_dist", 1))
    config = {"model": asdict(small_model_config(num_loops=2)), "train": {"seq_length": 24, "seed": 1}}
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    (folder / "loopcoder.json").write_text(json.dumps({"step": 10, "model": config["model"]}))
    (folder.parent / "latest").write_text("iter_0000010\n")

    out = tmp_path / "rows.jsonl"
    rows = diagnose.main([str(folder.parent), "--batch", "2", "--random-tokens", "--seed", "3",
                          "--attention-queries", "0", "--out", str(out)])
    expected = D.compute_loop_diagnostics(model, torch.randint(
        0, 128, (2, 24), generator=torch.Generator().manual_seed(3)), attention_queries=0)
    assert rows == expected  # the same weights, so the same numbers
    assert [json.loads(line)["step"] for line in out.read_text().splitlines()] == [10, 10]
    # The default attention queries (64) on a shorter sequence (24): as many as it has.
    rows = diagnose.main([str(folder.parent), "--batch", "2", "--random-tokens", "--seed", "3"])
    assert any("attention_entropy_global" in row for row in rows)


def test_a_nan_forward_gives_null_metrics_not_a_crash(tmp_path, caplog):
    """A diverged model (NaN weights: every hidden state after loop 1's first layer is NaN) gets
    null metrics, with a warning, and strict JSON rows in metrics.jsonl: the effective rank's SVD
    must not crash (LinAlgError, exit 1) before the trainer's skip-and-diverge path stops the run
    (exit 5)."""
    from omegaconf import OmegaConf

    from pretrain.metrics import MetricsLogger

    model = build_small(num_loops=2)
    with torch.no_grad():
        model.decoder.layers[0].mlp.linear_fc2.weight.fill_(float("nan"))
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    rows = D.compute_loop_diagnostics(model, tokens, attention_queries=4)
    assert [row["loop"] for row in rows] == [1, 2]
    assert all(row["effective_rank"] is None and row["step_size"] is None for row in rows)
    assert "not finite" in caplog.text

    wandb_off = OmegaConf.create({"mode": "disabled"})
    metrics = MetricsLogger(str(tmp_path), True, 10, wandb_off, {})
    metrics.log_diagnostics(rows, step=3)
    metrics.log({"step": 3, "consumed_samples": 12, "loss": float("nan"), "lr": 1e-3,
                 "grad_norm": float("inf")})
    strict = [json.loads(line, parse_constant=pytest.fail)
              for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("loop") for row in strict] == [1, 2, None]
    assert strict[-1]["loss"] is None and strict[-1]["grad_norm"] is None
