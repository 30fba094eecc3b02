"""Tensor, sequence and pipeline parallelism of the PLT model give the single-process losses and
gradients: fixed micro-batches through megatron's schedules on several gloo processes, against the
same micro-batches through one process (tests/distributed/model_worker.py).

Pipeline parallelism runs each loop as a virtual chunk (model/pipeline.py) under megatron's
interleaved schedule; with one loop it is megatron's plain 1F1B schedule.

Tolerance: the same fp32 operations split over processes and summed in another order;
per-parameter gradients agree to ~1e-6 relative to their largest entry (checked at 1e-5),
losses to 1e-6 absolute.
"""

import subprocess

import pytest
import torch

from tests.fixtures import REPO, subprocess_env, torchrun_command

pytestmark = pytest.mark.distributed
_single_process = {}


def run(out, nproc, args):
    out.mkdir()
    cmd = torchrun_command(nproc, "-m", "tests.distributed.model_worker", "--out", str(out), *args)
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [torch.load(out / f"rank{r}.pt") for r in range(nproc)]
    losses = [loss for r in results for loss in r["losses"]]
    grads = {name: g for r in results for name, g in r["grads"].items()}
    return losses, grads


def single_process(tmp_path_factory, model_args):
    key = tuple(model_args)
    if key not in _single_process:
        _single_process[key] = run(tmp_path_factory.mktemp("single") / "out", 1, model_args)
    return _single_process[key]


LAYOUTS = [
    pytest.param(["--pp", "2"], 2, ["--loops", "1"], id="pp2-1f1b-R1"),
    pytest.param(["--pp", "2"], 2, ["--loops", "2"], id="pp2-loops-as-chunks-R2"),
    pytest.param(["--pp", "2"], 2, ["--loops", "3"], id="pp2-loops-as-chunks-R3"),
    pytest.param(["--pp", "2"], 2, ["--loops", "2", "--shared-kv", "0"], id="pp2-vanilla-R2"),
    pytest.param(["--pp", "2"], 2, ["--loops", "3", "--clp-offset", "0"], id="pp2-neutral-R3"),
    pytest.param(["--tp", "2"], 2, ["--loops", "2"], id="tp2-R2"),
    pytest.param(["--tp", "2", "--sp", "1"], 2, ["--loops", "2"], id="tp2-sp-R2"),
    pytest.param(["--tp", "2", "--sp", "1"], 2, ["--loops", "2", "--gate-input", "query"],
                 id="tp2-sp-query-gate-R2"),
    pytest.param(["--pp", "2"], 2, ["--loops", "2", "--gate-input", "query"],
                 id="pp2-query-gate-R2"),
    pytest.param(["--tp", "2", "--pp", "2"], 4, ["--loops", "2"], id="tp2-pp2-R2",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("layout, nproc, model_args", LAYOUTS)
def test_layout_matches_one_process(tmp_path, tmp_path_factory, layout, nproc, model_args):
    ref_losses, ref_grads = single_process(tmp_path_factory, model_args)
    losses, grads = run(tmp_path / "parallel", nproc, layout + model_args)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=0, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        scale = ref.abs().max().clamp(min=1e-12)
        assert (grads[name] - ref).abs().max() / scale < 1e-5, name
