"""The `study` node: which model sizes and how many seeds a study experiment sweeps.

    python -m pretrain.train -m +experiment=clp_ablation                          # the defaults
    python -m pretrain.train -m +experiment=clp_ablation study.sizes=[study_xs,study_s] \
        study.seeds=2

Hydra's basic sweeper takes its sweep as strings of comma-separated choices
(`hydra.sweeper.params`); a list or a count on the command line of a multirun would itself be a
sweep (`study.seeds=1,2` runs twice) or no sweep at all. So the experiment (conf/experiment/
clp_ablation.yaml) reads these typed keys through the resolvers below: `study.sizes` (conf/model/
presets) becomes `model=<a>,<b>,...`, `study.seeds` (a count N) becomes `train.seed=1,...,N`. Seed
index i is train.seed=i for every cell: the same initial weights (pretrain/distributed.py seeds the
RNG the model's init draws from) and the same data order and held-out batch (data/loader.py) for
every size, loop count and arm of that index. A single run never reads this node.

The folder of each cell names its knobs (`${clp_arm:...}`): base (R=1: one model for every arm),
clp (the published offset), noclp (clp=false) or neutral (clp_offset=0, docs/spec.md#ablations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

DEFAULT_SIZES = ["study_xs", "study_s", "study_m"]


@dataclass
class StudyConfig:
    sizes: List[str] = field(default_factory=lambda: list(DEFAULT_SIZES))  # conf/model/ presets
    seeds: int = 3                                                         # seed indices 1..N


def _refuse(message: str):
    from model.config import ConfigError

    raise ConfigError(message)


def sweep_sizes(sizes) -> str:
    """`model=` choices of the sweep: the presets of study.sizes, comma-separated."""
    names = [str(size) for size in sizes]
    if not names or not all(name.replace("_", "").replace("-", "").isalnum() for name in names):
        _refuse(f"study.sizes={names}; give one or more conf/model/ preset names, e.g. "
                f"study.sizes=[{','.join(DEFAULT_SIZES)}]")
    return ",".join(names)


def sweep_seeds(seeds) -> str:
    """`train.seed=` choices of the sweep: 1..study.seeds."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        _refuse(f"study.seeds={seeds!r}; it is the number of seeds, an integer >= 1 (seed index "
                f"i trains with train.seed=i)")
    return ",".join(str(i) for i in range(1, seeds + 1))


def clp_arm(num_loops, clp, clp_offset) -> str:
    """The cell's arm of the CLP ablation, for its folder name."""
    if int(num_loops) == 1:
        return "base"
    if not _true(clp):
        return "noclp"
    return "neutral" if int(clp_offset) == 0 else "clp"


def _true(value) -> bool:
    return value is True or str(value).lower() == "true"


def register_study_resolvers() -> None:
    """Idempotent (pretrain/resolvers.py registers them with the others)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("study_sizes", sweep_sizes, replace=True)
    OmegaConf.register_new_resolver("study_seeds", sweep_seeds, replace=True)
    OmegaConf.register_new_resolver("clp_arm", clp_arm, replace=True)
