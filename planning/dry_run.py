"""Build one rank's part of a large layout on the meta device, in one process, before submitting.

    report = dry_run(cfg, world_size=64, rank=5)     # cfg: the composed run config
    print(report.format())

torch's fake process group (``FakeStore`` + backend "fake": collectives return at once, nothing is
sent) stands in for the cluster, so megatron's ``initialize_model_parallel(tp, pp)`` builds the
real group layout of ``world_size`` ranks and this process is rank ``rank`` of it. The model is
built for that rank exactly as pretrain/engines/megatron.py builds it (``ModelConfig.build`` with the run's
tp/pp/vpp/sequence parallelism, ``PLTModel``), with parameters on the meta device: no memory, no
initialisation, seconds for a 7B. What it checks:

- divisibility and layout: pretrain/config.py ``validate`` and the model's own config checks (heads,
  groups, ffn and layers against tp/pp), with their messages;
- shapes: every parameter of the rank, as built (``--params`` prints them);
- memory: the rank's parameter count from the built model must equal the planner's count for its
  pipeline stage (planning/planner.py), then the planner's memory per GPU for that rank.
Pipeline layouts (pp > 1) are built the same way, as the model supports them: a stage's model,
pre_process on the first stage, the head on the last; a model that refuses pp > 1 is reported with
its own message.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch

from model import cpu_compat
from planning import planner
from pretrain.config import validate


@dataclass
class RankReport:
    world_size: int
    rank: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp: int
    pp: int
    dp: int
    parameters: Dict[str, Tuple[Tuple[int, ...], str]] = field(default_factory=dict)
    num_parameters: int = 0
    parameter_bytes: int = 0
    planned_parameters: int = 0
    plan: planner.Plan | None = None

    def format(self, show_parameters: bool = False) -> str:
        lines = [
            f"rank {self.rank} of {self.world_size}: tp rank {self.tp_rank}/{self.tp}, pp stage "
            f"{self.pp_rank}/{self.pp}, dp rank {self.dp_rank}/{self.dp}",
            f"built on meta: {len(self.parameters)} tensors, {self.num_parameters:,} parameters "
            f"({self.parameter_bytes / planner.GIB:.2f} GiB as built); planner for this stage: "
            f"{self.planned_parameters:,} ({'equal' if self.planned_parameters == self.num_parameters else 'DIFFERENT'})",
        ]
        if show_parameters:
            lines += [f"  {name:<60} {str(list(shape)):>16} {dtype}"
                      for name, (shape, dtype) in self.parameters.items()]
        if self.plan is not None:
            lines.append("")
            lines.append(planner.format_table([self.plan]))
        return "\n".join(lines)


@contextlib.contextmanager
def fake_world(layout, rank: int):
    """torch.distributed on the fake backend and megatron's parallel state for this rank of
    `layout` (pretrain/layout.py ParallelLayout)."""
    from megatron.core import parallel_state
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from pretrain.distributed import init_model_parallel

    cpu_compat.apply()  # megatron's CUDA calls on a laptop
    if torch.distributed.is_initialized():
        raise RuntimeError("a process group already exists in this process; the dry run needs "
                           "its own (run it in a fresh process)")
    torch.distributed.init_process_group("fake", store=FakeStore(), rank=rank,
                                         world_size=layout.world_size)
    try:
        # No gloo groups: they would rendezvous for real. Everything else is megatron's layout.
        init_model_parallel(layout.tp, layout.pp, layout.vpp, seed=1234,
                            create_gloo_process_groups=False)
        yield parallel_state
    finally:
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        torch.distributed.destroy_process_group()


def dry_run(cfg, world_size: int, rank: int = 0, **plan_kwargs) -> RankReport:
    """Validate the layout, build ``rank``'s model on the meta device, and plan its memory.
    Raises pretrain.config.ConfigError (or the model's error) naming the bad key."""
    from model import PLTModel

    if not 0 <= rank < world_size:
        raise ValueError(f"--rank {rank} is outside the world of {world_size} ranks")
    layout = validate(cfg, world_size)
    bf16 = plan_kwargs.pop("bf16", cfg.train.precision in ("auto", "bf16"))
    with fake_world(layout, rank) as state:
        model_config = cfg.model.build(
            tensor_parallel=layout.tp, pipeline_parallel=layout.pp,
            virtual_pipeline_parallel=layout.vpp, sequence_parallel=layout.sequence_parallel,
            params_dtype=torch.bfloat16 if bf16 else torch.float32,
            perform_initialization=False)
        with torch.device("meta"):
            module = PLTModel(model_config)
        report = RankReport(
            world_size=world_size, rank=rank,
            tp_rank=state.get_tensor_model_parallel_rank(),
            pp_rank=state.get_pipeline_model_parallel_rank(),
            dp_rank=state.get_data_parallel_rank(), tp=layout.tp, pp=layout.pp,
            dp=state.get_data_parallel_world_size())
    for name, param in module.named_parameters():
        report.parameters[name] = (tuple(param.shape), str(param.dtype).replace("torch.", ""))
        report.num_parameters += param.numel()
        report.parameter_bytes += param.numel() * param.element_size()
    stage = planner.parameters_per_stage(cfg.model, layout.tp, layout.pp)[report.pp_rank]
    report.planned_parameters = sum(stage.values())
    report.plan = planner.make_plan(cfg, world_size, bf16=bf16, **plan_kwargs)
    return report

