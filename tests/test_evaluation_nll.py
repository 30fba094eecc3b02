"""The canonical solutions' likelihood: solution_nll equals the loss computed by hand from the
model's logits on those tokens (batched and padded or not), long inputs keep the solution, and the
trainer's call (eval.code) returns its metrics row and refuses bad keys by name."""

import math

import pytest
import torch

from evaluation.during_training import evaluate_code
from pretrain.eval_code import EvalCodeConfig, validate_code_config
from evaluation.nll import score_solutions, solution_nll
from evaluation.problems import load_problems
from model.config import ConfigError
from tests.fixtures import build_small

MODEL = dict(vocab_size=640, max_position_embeddings=1024)  # the tokenizer has 600 pieces


@pytest.fixture(scope="module")
def problems():
    return load_problems(7)


def by_hand(model, tokenizer, problem):
    """(tokens, nats): each solution token's -log softmax(logits) at the position before it."""
    prompt = tokenizer.encode(problem.prompt)
    solution = tokenizer.encode(problem.canonical_solution)
    tokens = torch.tensor([prompt + solution])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(tokens).double(), dim=-1)[0]  # [s, vocab]
    positions = range(len(prompt) - 1, len(prompt) + len(solution) - 1)
    return len(solution), -sum(float(log_probs[i, tokens[0, i + 1]]) for i in positions)


@pytest.mark.parametrize("num_loops", [1, 2])
def test_solution_nll_equals_the_loss_by_hand(megatron_world, tokenizer, problems, num_loops):
    model = build_small(num_loops=num_loops, **MODEL)
    expected = [by_hand(model, tokenizer, p) for p in problems]
    # Batches of 3 mix prompt lengths: right padding must not reach any scored position.
    scores = score_solutions(model, tokenizer, problems, batch_size=3)
    for (tokens, nats), score in zip(expected, scores):
        assert score.tokens == tokens
        # fp32 forward in both; padding changes the attention kernel's reduction length only.
        assert score.nats == pytest.approx(nats, rel=1e-5)
    total_tokens = sum(t for t, _ in expected)
    total_nats = sum(n for _, n in expected)
    summary = solution_nll(model, tokenizer, problems, batch_size=3)
    assert summary["humaneval_tokens"] == total_tokens
    assert summary["humaneval_nll"] == pytest.approx(total_nats / total_tokens, rel=1e-5)
    assert summary["humaneval_bits"] == pytest.approx(total_nats / math.log(2), rel=1e-5)
    assert not model.training


def test_a_long_input_loses_the_prompt_start_not_the_solution(megatron_world, tokenizer):
    problem = load_problems()[0]
    solution = tokenizer.encode(problem.canonical_solution)
    limit = len(solution) + 10  # room for the solution and 10 prompt tokens
    model = build_small(vocab_size=640, max_position_embeddings=limit)
    score = score_solutions(model, tokenizer, [problem])[0]
    assert score.tokens == len(solution)
    prompt = tokenizer.encode(problem.prompt)[-10:]
    tokens = torch.tensor([prompt + solution])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(tokens).double(), dim=-1)[0]
    nats = -sum(float(log_probs[i, tokens[0, i + 1]]) for i in range(9, tokens.shape[1] - 1))
    assert score.nats == pytest.approx(nats, rel=1e-5)


def test_the_trainers_call_returns_its_metrics_row(megatron_world, tokenizer, problems):
    model = build_small(**MODEL)
    cfg = EvalCodeConfig(interval=10, problems=3, batch_size=2, greedy_pass_at_1=True,
                         max_new_tokens=8, workers=2, timeout_s=10.0)
    row = evaluate_code(model, tokenizer, cfg, step=10)
    assert set(row) == {"step", "humaneval_nll", "humaneval_bits", "humaneval_tokens",
                        "humaneval_pass@1"}
    assert row["step"] == 10
    assert row == pytest.approx({**solution_nll(model, tokenizer, problems[:3]), "step": 10,
                                 "humaneval_pass@1": 0.0})  # a random model passes nothing
    # Other ranks (rank != 0) compute the likelihood with everyone but run no sandbox.
    assert "humaneval_pass@1" not in evaluate_code(model, tokenizer, cfg, rank=1)


def test_bad_eval_code_keys_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"eval.code.problems=200; it must be in 1..164"):
        validate_code_config(EvalCodeConfig(problems=200))
    with pytest.raises(ConfigError, match=r"eval.code.interval=-1"):
        validate_code_config(EvalCodeConfig(interval=-1))
    validate_code_config(EvalCodeConfig())
