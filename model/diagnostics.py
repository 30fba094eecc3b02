"""Per-loop diagnostics of a PLT model (docs/spec.md#loop-diagnostics, LoopCoder-v2 3.2).

Convention: loops are numbered r = 1..R and h_0 = E(x) (the embeddings), so h_1 is loop 1's output.
Each metric is defined where its inputs exist; elsewhere the row holds None:

    step_size         r >= 1   mean over tokens of ||h_r - h_{r-1}||
    angular_change    r >= 2   mean over tokens of cos(h_r - h_{r-1}, h_{r-1} - h_{r-2}); < 0 = oscillation
    effective_rank    r >= 1   exp(entropy of sigma / sum(sigma)) of rms_normalise(h_r), tokens as rows
    offset_cost       r >= 2   mean over positions i >= 2 of ||h_{r-1,i} - h_{r-1,i-1}||: the mismatch
                               loop r pays for reading h_{r-1} one position late (the CLP shift)
    output_shift      r >= 2   mean over tokens of KL(p_r || p_{r-1}), p_r = softmax(Head(h_r)) (logit lens)
    gate_mean         r >= 2   mean gate g over layers, heads and tokens (gated models only, either
                               gate input; 0.5 at init)
    attention_entropy_global / _local   entropy of the attention distribution per branch, mean over
                               layers, heads and the sampled queries. Loop 1's plain causal attention
                               counts as its "global" branch (it reads the same keys, loop 1's K/V).
    attention_kl_global / _local        KL(A_r || A_{r-1}) of the same branch: global from r = 2 (both
                               read loop 1's keys), local from r = 3 (loop 2 has no earlier local branch).

A forward that is not finite (a diverging model: NaN or inf hidden states) gives None for every
metric whose value is not finite, with one warning naming the loops: the diagnostics must never be
what stops a run that the trainer's skip-and-diverge path is about to handle (pretrain/trainer.py).

"RMSNorm(h_r)" in the effective rank is taken without the learned weight: the metric measures how
spread the token representations are, which a per-channel rescale would distort. The attention
metrics recompute probabilities in float32 from the q/k the kernel receives, for batch element 0 and
``attention_queries`` evenly spaced query positions only, so their memory is heads x queries x seq
per layer, not seq^2.

Parallelism: pipeline parallelism is refused (parallel.pp=1 only). Tensor parallelism: hidden
states are replicated over TP ranks (gathered first under sequence parallelism); logits are
vocab-sharded and gathered per sequence; gate and attention means are over local heads and averaged
over the TP group (every rank holds the same number of heads). This path is written, not yet run
under TP > 1 (no multi-process test). Every TP rank must call ``compute_loop_diagnostics`` (collectives inside); all ranks get the same rows.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from model.kernels import causal_window_mask
from model.pipeline import holds_whole_model
from model.unwrap import unwrap

logger = logging.getLogger(__name__)

METRICS = ("step_size", "angular_change", "effective_rank", "offset_cost", "output_shift",
           "gate_mean", "attention_entropy_global", "attention_entropy_local",
           "attention_kl_global", "attention_kl_local")


# -- pure metrics on tensors: [seq, batch, hidden] (megatron layout) or [tokens, hidden] ----------
def _tokens(h: torch.Tensor) -> torch.Tensor:
    return h.float().reshape(-1, h.shape[-1])


def step_size(h_r: torch.Tensor, h_prev: torch.Tensor) -> float:
    return (_tokens(h_r) - _tokens(h_prev)).norm(dim=-1).mean().item()


def angular_change(h_r: torch.Tensor, h_prev: torch.Tensor, h_prev2: torch.Tensor) -> float:
    step, previous_step = _tokens(h_r) - _tokens(h_prev), _tokens(h_prev) - _tokens(h_prev2)
    return F.cosine_similarity(step, previous_step, dim=-1, eps=1e-12).mean().item()


def effective_rank(h: torch.Tensor, eps: float = 1e-6) -> Optional[float]:
    """None for hidden states that are not finite: the SVD of NaN fails (LinAlgError)."""
    x = _tokens(h)
    if not torch.isfinite(x).all():
        return None
    x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)  # RMS-normalise each token
    sigma = torch.linalg.svdvals(x)
    p = sigma / sigma.sum()
    return math.exp(-torch.special.xlogy(p, p).sum().item())


def offset_cost(h_prev: torch.Tensor) -> float:
    """Mean ||h_i - h_{i-1}|| over positions i >= 2 of each sequence (dim 0 is the sequence)."""
    h = h_prev.float()
    return (h[1:] - h[:-1]).norm(dim=-1).mean().item()


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-token KL(softmax(p) || softmax(q)) in float32 over the last dim: shape logits.shape[:-1]."""
    log_p, log_q = F.log_softmax(logits_p.float(), -1), F.log_softmax(logits_q.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def attention_log_probs(q: torch.Tensor, k: torch.Tensor, query_positions: torch.Tensor,
                        window: Optional[int], softmax_scale: Optional[float]) -> torch.Tensor:
    """log attention probabilities [heads, n_queries, k_len] in float32 for one sequence.

    q [q_len, heads, d], k [k_len, kv_heads, d] (flash layout without batch), causal as the kernel
    (model/kernels.py); masked keys get -inf.
    """
    q, k = q.float()[query_positions], k.float()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: each KV head serves a group
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    allowed = causal_window_mask(k.shape[0], k.shape[0], window, q.device)[query_positions]
    return scores.masked_fill(~allowed, float("-inf")).log_softmax(-1)


def attention_entropy(log_probs: torch.Tensor) -> float:
    p = log_probs.exp()
    return -torch.where(p > 0, p * log_probs, 0.0).sum(-1).mean().item()


def attention_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """Mean KL(p || q) over heads and queries; p and q share their support (same mask)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1).mean().item()


# -- running the model ----------------------------------------------------------------------------
class _Recorder:
    """Forward hooks for one diagnostics pass, removed on exit: the current loop, the gate values and
    the attention probabilities of the sampled queries, reduced on the fly."""

    def __init__(self, model, attention_queries: int):
        self.model, self.attention_queries = model, attention_queries
        self.loop = 0  # run_loops calls the decoder once per loop, in order: loop = number of calls
        self.gate: Dict[int, List[float]] = {}
        self.attention: Dict[tuple, List[float]] = {}  # (loop, metric name) -> per-layer values
        self.previous: Dict[tuple, torch.Tensor] = {}  # (layer, branch) -> last loop's log-probs
        self.handles = []

    def __enter__(self):
        def next_loop(module, args):
            self.loop += 1
        self.handles.append(self.model.decoder.register_forward_pre_hook(next_loop))
        for index, layer in enumerate(self.model.decoder.layers):
            attention = layer.self_attention
            if getattr(attention, "linear_gate", None) is not None:
                # The gate's logits pass through this hook point whatever the gate reads
                # (model.gate_input: the hidden state or the query).
                self.handles.append(attention.gate_logits.register_forward_hook(self._on_gate))
            if self.attention_queries > 0:
                self.handles.append(attention.core_attention.register_forward_pre_hook(
                    self._attention_hook(index, attention.core_attention), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _on_gate(self, module, args, output):
        logits = output  # [b, s, local heads]
        self.gate.setdefault(self.loop, []).append(torch.sigmoid(logits.float()).mean().item())

    def _attention_hook(self, layer_index, core_attention):
        def hook(module, args, kwargs):
            q, k = args[0], args[1]  # [b, s, heads, d], [b, s, kv_heads, d]
            window = kwargs.get("window", args[3] if len(args) > 3 else None)
            branch = "global" if window is None else "local"
            positions = torch.linspace(0, q.shape[1] - 1, self.attention_queries, device=q.device)
            positions = positions.round().long().unique()
            log_probs = attention_log_probs(q[0], k[0], positions, window,
                                            getattr(core_attention, "softmax_scale", None))
            self.attention.setdefault((self.loop, f"attention_entropy_{branch}"), []).append(
                attention_entropy(log_probs))
            previous = self.previous.get((layer_index, branch))
            if previous is not None:
                self.attention.setdefault((self.loop, f"attention_kl_{branch}"), []).append(
                    attention_kl(log_probs, previous))
            self.previous[(layer_index, branch)] = log_probs
        return hook


def _hidden_states(model, input_ids) -> List[torch.Tensor]:
    """[h_0 = E(x), h_1, ..., h_R] whether run_loops returns the list or LoopStates(.hidden, .kv)."""
    states = model.run_loops(input_ids)
    return list(getattr(states, "hidden", states))


def _tp_group(model):
    group = getattr(getattr(model, "pg_collection", None), "tp", None)
    if group is None or not torch.distributed.is_initialized():
        return None, 1
    return group, torch.distributed.get_world_size(group)


def _tp_mean(values: List[float], group, tp: int, device) -> Optional[float]:
    """Mean of per-layer means of local heads, averaged over the TP ranks (equal head counts)."""
    if not values:
        return None
    mean = torch.tensor(sum(values) / len(values), dtype=torch.float64, device=device)
    if tp > 1:
        torch.distributed.all_reduce(mean, group=group)
        mean /= tp
    return mean.item()


def compute_loop_diagnostics(model, input_ids: torch.Tensor,
                             attention_queries: int = 64) -> List[dict]:
    """One row per loop r = 1..R: {"loop": r, <METRICS>: float or None} on a held-out batch.

    ``input_ids`` [batch, seq]. Runs under torch.no_grad() in eval mode and restores the training
    mode. ``attention_queries=0`` skips the attention metrics (they are the costly part).
    """
    from megatron.core.tensor_parallel import (gather_from_sequence_parallel_region,
                                               gather_from_tensor_model_parallel_region)

    model = unwrap(model)
    config, was_training = model.config, model.training
    if not holds_whole_model(config):
        raise NotImplementedError(f"loop diagnostics need parallel.pp=1, got "
                                  f"{config.pipeline_model_parallel_size}; run scripts/diagnose.py "
                                  f"on a checkpoint instead (it loads it with pp=1)")
    group, tp = _tp_group(model)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)  # held-out batches live on the CPU until used
    model.eval()
    try:
        with torch.no_grad(), _Recorder(model, attention_queries) as recorder:
            local = _hidden_states(model, input_ids)  # a slice of the sequence under SP
            # Logit lens one sequence at a time: full-vocab logits of a long batch do not fit twice.
            shift_sums = [0.0] * len(local)
            for b in range(input_ids.shape[0]):
                previous_logits = None
                for r in range(1, len(local)):
                    logits = model.head(local[r][:, b:b + 1])  # [s, 1, vocab / tp]
                    if tp > 1:
                        logits = gather_from_tensor_model_parallel_region(logits, group=group)
                    if previous_logits is not None:
                        shift_sums[r] += kl_divergence(logits, previous_logits).mean().item()
                    previous_logits = logits
            if config.sequence_parallel:
                local = [gather_from_sequence_parallel_region(h, False, group=group) for h in local]
    finally:
        model.train(was_training)

    hidden = local
    rows = []
    for r in range(1, len(hidden)):
        row = {"loop": r}
        row["step_size"] = step_size(hidden[r], hidden[r - 1])
        row["angular_change"] = angular_change(hidden[r], hidden[r - 1], hidden[r - 2]) if r >= 2 else None
        row["effective_rank"] = effective_rank(hidden[r])
        row["offset_cost"] = offset_cost(hidden[r - 1]) if r >= 2 else None
        row["output_shift"] = shift_sums[r] / input_ids.shape[0] if r >= 2 else None
        row["gate_mean"] = _tp_mean(recorder.gate.get(r, []), group, tp, device)
        for name in METRICS[6:]:
            row[name] = _tp_mean(recorder.attention.get((r, name), []), group, tp, device)
        rows.append(_finite_only(row))
    not_finite = [row["loop"] for row, h in zip(rows, hidden[1:]) if not torch.isfinite(h).all()]
    if not_finite:
        logger.warning("loop diagnostics: the hidden states of loop(s) %s are not finite (NaN or "
                       "inf): their metrics are null", not_finite)
    return rows


def _finite_only(row: dict) -> dict:
    """A metric that is NaN or inf (a NaN forward) becomes None, like an undefined one."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in row.items()}


def flatten_for_metrics(rows: List[dict], step: int) -> List[dict]:
    """metrics.jsonl rows: {"step", "loop", <metric>: value} per loop, undefined metrics left out."""
    return [{"step": step, **{k: v for k, v in row.items() if v is not None}} for row in rows]


def scalars_for_wandb(rows: List[dict]) -> Dict[str, float]:
    """One flat dict for a wandb log call: {"diagnostics/loop2/output_shift": value, ...}."""
    return {f"diagnostics/loop{row['loop']}/{k}": v for row in rows for k, v in row.items()
            if k != "loop" and v is not None}
