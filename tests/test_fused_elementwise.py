"""model.fused_elementwise (model/fused_elementwise.py) against the unfused path on CPU, values
and gradients. torch.compile runs here through inductor's C++ backend, so these are the compiled
kernels themselves, not their Python formulas (each formula compiles once per process, and again
for a new dtype or shape kind).

Tolerances, relative to each tensor's largest entry: one function in fp32, 1e-6 (the compiled
kernels reorder sums and the backward formulas are written out by hand, ours for the norm and
RoPE, megatron's for SwiGLU: a few float32 roundings apart); the norm in bf16, 8e-3 (two bf16
roundings); the whole two-layer, two-loop model's loss, every parameter's gradient and its
logits in fp32, 2e-5 (those roundings carried through attention, loops and the head), and its
greedy decoding token for token.
"""

import pytest
import torch
import torch.nn.functional as F
from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

from model.config import ConfigError
from model.generation import generate
from model.fused_elementwise import compiled, fused_rms_norm, fused_rotary, rms_norm
from tests.fixtures import build_small, small_model_config

pytestmark = pytest.mark.slow  # 15-40 s with inductor's cache empty, nearly all of it compiling


def _assert_close(got, want, rel):
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= rel * scale, (got - want).abs().max().item() / scale


def _grads(fn, *inputs, seed=1):
    """fn's output and the gradients of a random weighting of it w.r.t. every input."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return (out, *torch.autograd.grad((out * upstream).sum(), leaves))


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
def test_rms_norm_fused_equals_unfused(dtype, rel):
    """bf16 (the GPU's dtype): both compute in fp32 and round once to bf16; 8e-3 is two of its
    roundings at the largest entry (the fp32 results may straddle a rounding boundary)."""
    x, weight = _randn(24, 2, 64) * 3, 1 + _randn(64, seed=1) / 4
    x, weight = x.to(dtype), weight.to(dtype)
    got = _grads(lambda a, w: fused_rms_norm(a, w, 1e-5), x, weight)
    want = _grads(lambda a, w: rms_norm(a, w, 1e-5), x, weight)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        _assert_close(g.float(), w.float(), rel)


@pytest.mark.usefixtures("megatron_world")  # megatron's RoPE asks for the context-parallel group
@pytest.mark.parametrize("per_sequence_positions", [False, True])
def test_rotary_fused_equals_megatrons(per_sequence_positions):
    """Against megatron's own unfused RoPE, with the model's frequencies: [s, 1, 1, d], or
    [s, b, 1, d] when each sequence has its own positions (model/plt_model.py ``rotary``)."""
    rope = RotaryEmbedding(kv_channels=32, rotary_percent=1.0, rotary_base=10000.0,
                           use_cpu_initialization=True)
    seq, batch = 40, 3
    freqs = rope(seq)
    if per_sequence_positions:
        positions = torch.randint(0, seq, (batch, seq), generator=torch.Generator().manual_seed(2))
        freqs = freqs[positions.t()].squeeze(2)
    config = small_model_config(num_loops=1).build()
    t = _randn(seq, batch, 4, 32)
    got = _grads(lambda a: fused_rotary(a, freqs), t)  # the angles are no parameter: no gradient
    want = _grads(lambda a: apply_rotary_pos_emb(a, freqs, config=config), t)
    for g, w in zip(got, want):
        _assert_close(g, w, 1e-6)


def test_swiglu_fused_equals_unfused():
    """megatron's fused SwiGLU (what the MLP runs with the flag on) against its unfused chain."""
    y = _randn(16, 2, 2 * 48) * 2

    def unfused(x):
        x_glu, x_linear = torch.chunk(x, 2, dim=-1)
        return F.silu(x_glu) * (x_linear + 0.0)

    got = _grads(lambda x: bias_swiglu_impl(x, None), y)
    want = _grads(unfused, y)
    for g, w in zip(got, want):
        _assert_close(g, w, 1e-6)


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=ids).mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.usefixtures("megatron_world")
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_a_fused_model_trains_and_predicts_like_the_unfused_one(recompute):
    """A two-loop model (gated loops: the gate norm, both branches, the per-loop norm) with its
    fused twin of the same weights: training loss, every gradient, and eval logits (no grad, as
    decoding runs them). With recomputation the compiled kernels rerun inside the checkpoint."""
    unfused = build_small(num_loops=2, recompute=recompute).train()
    fused = build_small(num_loops=2, recompute=recompute, fused_elementwise=True).train()
    fused.load_state_dict(unfused.state_dict())
    assert fused.config.bias_activation_fusion and not unfused.config.bias_activation_fusion
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))
    before = compiled.cache_info()
    want_loss, want_grads = _loss_and_grads(unfused, ids)
    assert compiled.cache_info() == before  # the unfused model never asks for a compiled kernel
    got_loss, got_grads = _loss_and_grads(fused, ids)
    after = compiled.cache_info()
    assert after.currsize == 4 and after.hits + after.misses > before.hits + before.misses
    _assert_close(got_loss, want_loss, 2e-5)
    for name, want in want_grads.items():
        _assert_close(got_grads[name], want, 2e-5)
    with torch.no_grad():
        _assert_close(fused.eval()(ids), unfused.eval()(ids), 2e-5)
    if recompute == "none":  # decoding: prefill, then one token of every loop per forward
        prompts = [ids[0, :5], ids[1, :9]]
        assert all(torch.equal(a, b) for a, b in zip(generate(fused, prompts, 6),
                                                     generate(unfused, prompts, 6)))



def _saved_bytes(model, ids) -> int:
    """The bytes autograd keeps for backward from one training forward (each storage once)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=ids).mean()
    return sum(storages.values())


@pytest.mark.usefixtures("megatron_world")
def test_the_fused_model_saves_less_for_backward():
    """What makes the planner's count (unfused activations, planning/memory.py) an upper bound
    for the fused path: the fused SwiGLU keeps only fc1's output, the compiled norm no fp32
    copies."""
    unfused = build_small(num_loops=2).train()
    fused = build_small(num_loops=2, fused_elementwise=True).train()
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))
    assert _saved_bytes(fused, ids) < _saved_bytes(unfused, ids)


def test_a_machine_that_cannot_compile_is_a_config_error_naming_the_key(monkeypatch):
    """No C++ compiler on a CPU (what inductor needs there): exit status 2 naming the key, not a
    traceback. A norm epsilon of its own makes this a new kernel that must be compiled."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # the earlier tests may have spent the recompile limit (then: eager)
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    eps = 1e-5 * (1 + torch.rand(()).item())
    with pytest.raises(ConfigError, match=r"model.fused_elementwise=true .* cpu .*C\+\+ compiler"
                       r".*model.fused_elementwise=false"):
        fused_rms_norm(_randn(4, 8), torch.ones(8), eps)


def test_the_trainer_without_a_compiler_exits_2_before_writing_its_run_files(tmp_path):
    """The same, as a user meets it: the trainer checks before it writes the run's files."""
    from tests.fixtures import SMALL, output_of, run_trainer, small_data

    run_dir = tmp_path / "run"
    env = dict(CXX="/nonexistent/c++", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    result = run_trainer(run_dir, "model.fused_elementwise=true", "train.max_steps=3", *SMALL,
                         *small_data(), env=env)
    out = output_of(result)
    assert result.returncode == 2 and "Traceback" not in out, out
    assert "config error" in out and "model.fused_elementwise=false" in out, out
    # hydra's own .hydra/ and train.log are there for any config error; the run's files are not
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "resume.yaml").exists()
