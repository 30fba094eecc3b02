"""HumanEval completions: greedy decoding is deterministic and does not depend on the batch, the
stop sequences cut where HumanEval cuts, and decoding ends once every row has stopped."""

import pytest
import torch

from evaluation.generation import (STOP_SEQUENCES, generate_completions, stop_sequence_seen,
                                   truncate_at_stop)
from evaluation.problems import Problem, load_problems
from model.generation import generate
from tests.fixtures import build_small

MODEL = dict(vocab_size=640, max_position_embeddings=1024)  # the tokenizer has 600 pieces


@pytest.fixture(scope="module")
def short_problems():
    return sorted(load_problems(), key=lambda p: len(p.prompt))[:6]


def bigram_model(tokenizer, successor: dict):
    """A real R=2 PLT whose greedy choice after token t is successor[t]: each layer's output
    projections are zero (a layer passes its input on), the CLP hidden term is off (every loop
    sees E(x_i)), so the head sees RMSNorm(E(x_i)); the output row of successor[t] points along
    E(t) (logit 8 * 50 = 400 against ~50 for any other row: random 64-d directions)."""
    model = build_small(num_loops=2, clp_hidden_scale=0.0, untie_embeddings_and_output_weights=True,
                        **MODEL)
    ids = {text: tokenizer.encode(text) for text in successor} | {
        text: tokenizer.encode(text) for text in successor.values()}
    assert all(len(piece) == 1 for piece in ids.values()), ids  # each a single token
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
                param.zero_()
        embedding = model.embedding.word_embeddings.weight
        head = model.output_layer.weight
        head.zero_()
        for current, following in successor.items():
            row = embedding[ids[current][0]]
            head[ids[following][0]] += 50.0 * row / row.norm()
    return model


def test_truncate_at_stop_cuts_where_humaneval_cuts():
    body = "    return x + y"
    for stop in STOP_SEQUENCES:
        assert truncate_at_stop(body + stop + " more\n") == body  # the "\n" goes with the stop
    assert truncate_at_stop(body + "\n#a\ndef b():") == body  # the first stop wins
    words = "    s = 'class def # if print'\n"  # the words alone, mid-line, do not stop
    assert truncate_at_stop(words) == words
    # Indented lines belong to the function: only top-level statements end it.
    assert truncate_at_stop("    if x:\n        print(x)\n    # note\n") == (
        "    if x:\n        print(x)\n    # note\n")
    assert truncate_at_stop("") == ""


def test_stop_sequences_are_seen_in_the_newest_tokens(tokenizer):
    seen = stop_sequence_seen(tokenizer)
    rows = ["    return 1\ndef g():", "    return 1\n    if x:", "x\n# done", "    y = 2\n",
            "    return 1\nprint(f(2))", "    pass\nclass A:"]
    width = max(len(tokenizer.encode(r)) for r in rows)
    tokens = torch.full((len(rows), width), tokenizer.eod_id)
    for i, row in enumerate(rows):
        ids = tokenizer.encode(row)
        tokens[i, width - len(ids):] = torch.tensor(ids)  # left-padded with end-of-document
    assert seen(tokens).tolist() == [True, False, True, False, True, True]


def test_a_stop_callback_ends_decoding_without_changing_tokens(megatron_world):
    model = build_small(**MODEL)
    prompts = [torch.randint(0, 600, (n,), generator=torch.Generator().manual_seed(n))
               for n in (5, 9)]
    full = generate(model, prompts, 8)
    stopped = generate(model, prompts, 8,
                       stop=lambda new: torch.tensor([new.shape[1] >= 3, new.shape[1] >= 5]))
    # Rows are not cut at their mark: decoding ran until the last row was marked (5 tokens).
    for prompt, whole, short in zip(prompts, full, stopped):
        assert len(short) == len(prompt) + 5 and torch.equal(short, whole[:len(prompt) + 5])


def test_greedy_completions_are_deterministic_and_independent_of_the_batch(
        megatron_world, tokenizer, short_problems):
    model = build_small(**MODEL)
    runs = [generate_completions(model, tokenizer, short_problems, max_new_tokens=16,
                                 batch_size=batch, progress=False) for batch in (1, 4, 4)]
    assert [c.task_id for c in runs[0]] == [p.task_id for p in short_problems]
    assert all(c.new_tokens == 16 for c in runs[0])  # a random model hits no stop sequence
    assert runs[0] == runs[1] == runs[2]


def test_completions_stop_and_are_cut_at_the_first_stop_sequence(megatron_world, tokenizer):
    add = load_problems()[53]
    assert tokenizer.decode(tokenizer.encode(add.prompt)[-1:]) == "\n"
    # After the prompt's last "\n": "    return 1\n\ndef" then "def" forever; after "x": "x"
    # forever (never a stop).
    model = bigram_model(tokenizer, {"\n": "    ", "    ": "return", "return": " ", " ": "1",
                                     "1": "\n\n", "\n\n": "def", "def": "def", "x": "x"})
    endless = Problem("custom/endless", "def f(x):\n    return x", "", "", "f")
    alone = generate_completions(model, tokenizer, [add], max_new_tokens=20, progress=False)
    assert alone[0].completion == "    return 1\n"  # HumanEval cuts before "\ndef"
    assert alone[0].new_tokens == 6  # decoding ended with the token that completed "\ndef"
    both = generate_completions(model, tokenizer, [add, endless], max_new_tokens=20, batch_size=2,
                                progress=False)
    assert [c.completion for c in both] == ["    return 1\n", "x" * 20]
    assert [c.new_tokens for c in both] == [20, 20]  # the batch ran on for the endless row


def test_impossible_requests_are_refused(megatron_world, tokenizer, short_problems):
    model = build_small(**MODEL)
    with pytest.raises(ValueError, match="greedy decoding: all 5 samples"):
        generate_completions(model, tokenizer, short_problems, samples_per_task=5)
    from model.config import ConfigError

    # A configuration error (exit 2 in scripts.evaluate, not a traceback), naming the flag, the
    # task and the limit, with generate.py's own check.
    with pytest.raises(ConfigError, match=r"--max-new-tokens 2000: HumanEval/\d+'s prompt .*"
                                          r"max_position_embeddings=1024"):
        generate_completions(model, tokenizer, short_problems, max_new_tokens=2000)
