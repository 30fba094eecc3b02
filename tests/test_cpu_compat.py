"""The megatron-core CPU compatibility layer: on without CUDA, never on with it."""

import subprocess
import sys
import textwrap

import pytest
import torch

from model import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only case")


def test_active_without_cuda():
    assert cpu_compat.is_active()
    assert torch.cuda.current_device() == torch.device("cpu")


def test_hard_coded_cuda_placements_land_on_cpu():
    # The forms megatron uses: schedules' token counter, optimizer flags, .cuda(), type names.
    assert torch.zeros([], dtype=torch.int, device="cuda").device.type == "cpu"
    assert torch.tensor([1.0], device="cuda").device.type == "cpu"
    t = torch.ones(2)
    assert t.cuda() is t
    assert t.type() == "torch.cuda.FloatTensor"
    assert t.to("cuda").device.type == "cpu"


def test_cuda_rng_is_the_cpu_rng():
    torch.cuda.manual_seed(7)
    state = torch.cuda.get_rng_state()
    a = torch.rand(3)
    torch.cuda.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_never_applied_when_cuda_is_present():
    # A fresh interpreter that believes it has a GPU: apply() must leave torch.cuda untouched.
    code = textwrap.dedent("""
        import torch
        torch.cuda.is_available = lambda: True
        original = torch.cuda.current_device
        from model import cpu_compat
        assert cpu_compat.apply() is False and not cpu_compat.is_active()
        assert torch.cuda.current_device is original
        print("untouched")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "untouched" in out.stdout
