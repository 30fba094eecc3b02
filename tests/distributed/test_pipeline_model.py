"""Pipeline parallelism over the loops (model/pipeline.py) gives the single-process loss and
gradients: megatron's interleaved schedule with each loop a virtual chunk on 2 gloo processes,
against the same micro-batches through one process.

Tolerance: the same fp32 operations split over two processes; per-parameter gradients agree to
~2e-7 relative to their largest entry (checked at 1e-5), losses to 1e-6.
"""

import os
import subprocess
import sys

import pytest
import torch

from conftest import free_port

pytestmark = pytest.mark.distributed
WORKER = os.path.join(os.path.dirname(__file__), "pipeline_worker.py")


def run(tmp_path, name, nproc, *args):
    out = tmp_path / name
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", WORKER, "--out", str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [torch.load(out / f"rank{r}.pt") for r in range(nproc)]
    losses = [loss for r in results for loss in r["losses"]]
    grads = {name: g for r in results for name, g in r["grads"].items()}
    return losses, grads


@pytest.mark.parametrize("loops, shared_kv", [(1, 1), (2, 1), (3, 1), (2, 0)])
def test_pipelined_loops_match_one_process(tmp_path, loops, shared_kv):
    args = ["--loops", str(loops), "--shared-kv", str(shared_kv)]
    ref_losses, ref_grads = run(tmp_path, "single", 1, "--pp", "1", *args)
    losses, grads = run(tmp_path, "pp2", 2, "--pp", "2", *args)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=0, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        scale = ref.abs().max().clamp(min=1e-12)
        assert (grads[name] - ref).abs().max() / scale < 1e-5, name
