"""Which tools load an exported directory, and whether they compute what we trained: stated in the
export's warning and in the README.md written into the directory (docs/spec.md#published-formats).

    statement = who_loads(model_cfg)      # .transformers, .published, .served_differently

The published loaders (vLLM's and SGLang's `iquest_loopcoder` model file, and their Llama) read the
family's keys only. Against what our model varies:

- num_loops = 1: a plain decoder, exported as Llama: everything loads it natively.
- iquestloopcoder (clp=false, shared K/V, query gate): loop_num, loop_window_size: all read.
- iquestpltcoder with the shift: plt_num_loops, the scales, plt_normalize_per_loop,
  plt_gate_use_hidden_states, plt_window_size: all read.
- clp=false with the hidden gate (no published family): written as iquestpltcoder with our key
  `plt_clp: false`, which the loaders do not read; every tensor they expect is there, so they would
  load it and run the cross-loop shift we never trained: served, but computing another function.
  Refused unless asked for (export's `allow_served_differently`).
- shared_kv=false (the vanilla looped transformer): our key `plt_shared_kv: false`; the model has
  no loop >= 2 gate, and the loaders expect `plt_gate` tensors in every layer: they cannot load it.
The rest of what a config can vary (rope_theta, rms_norm_eps, tie_word_embeddings, the shapes) are
Llama keys that every loader reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from handoff.published_config import LLAMA_FAMILY, LOOP_FAMILY, family_of
from model.config import ModelConfig

ALLOW_FLAG = "--allow-served-differently"


@dataclass
class LoaderStatement:
    family: str
    transformers: str          # how transformers loads it
    published: str             # what vLLM / SGLang's published loaders do with it
    served_differently: bool   # they would load it but compute another function

    @property
    def published_serve_it(self) -> bool:
        return self.published.startswith("yes")


def who_loads(model_cfg: ModelConfig) -> LoaderStatement:
    family = family_of(model_cfg)
    remote = ("yes, with trust_remote_code=True: AutoModelForCausalLM runs this directory's "
              "modeling_iquestpltcoder.py (loopcoder's implementation)")
    if family == LLAMA_FAMILY:
        return LoaderStatement(family, "yes, natively: LlamaForCausalLM, no remote code",
                               "yes: LlamaForCausalLM, the architecture both ship", False)
    if family == LOOP_FAMILY:
        return LoaderStatement(family, remote, "yes: their iquest_loopcoder loader "
                               "(IQuest-Coder-V1 Loop, model_type iquestloopcoder) computes this "
                               "model", False)
    if not model_cfg.shared_kv:
        return LoaderStatement(family, remote, "no: this model (shared_kv=false, the vanilla "
                               "looped transformer) has no loop >= 2 gate and their loaders "
                               "expect plt_gate tensors in every layer, so they refuse it", False)
    if not model_cfg.clp:
        return LoaderStatement(family, remote, "no, although they would load it: every tensor "
                               "they expect is here, but they ignore `plt_clp: false` and run "
                               "LoopCoder-V2's cross-loop shift, which this model (clp=false "
                               "with the hidden gate) never had, so their output is not this "
                               "model's", True)
    return LoaderStatement(family, remote, "yes: their iquest_loopcoder loader (LoopCoder-V2, "
                           "model_type iquestpltcoder) computes this model", False)


def refusal(model_cfg: ModelConfig, where: str) -> str:
    """The one-paragraph refusal of an export the published loaders would serve differently."""
    return (f"{where}: this model (clp=false with the hidden gate) has no published format; it "
            "would be written as LoopCoder-V2 with loopcoder's key `plt_clp: false`, which vLLM "
            "and SGLang ignore: they would load the export and run the cross-loop shift this "
            "model never had, so what they serve would not be this model. Only transformers with "
            "the directory's own code (trust_remote_code=True) computes it. Export it anyway with "
            f"{ALLOW_FLAG} (its README.md then says not to serve it with vLLM or SGLang), or "
            "train with model.gate_input=query, which with clp=false is the published "
            "IQuest-Coder-V1 Loop architecture")


def readme(model_cfg: ModelConfig, dtype_name: str) -> str:
    """README.md of an exported directory: what the model is and which tools load it."""
    s = who_loads(model_cfg)
    loops = ("one pass (a plain Llama-style decoder)" if model_cfg.num_loops == 1 else
             f"{model_cfg.num_loops} loops, clp={model_cfg.clp}, shared_kv={model_cfg.shared_kv}, "
             f"gate_input={model_cfg.gate_input}, swa_window={model_cfg.swa_window}")
    code = ("" if s.family == LLAMA_FAMILY else
            "    AutoModelForCausalLM.from_pretrained(this_dir, trust_remote_code=True)\n")
    lines = [
        "# A loopcoder export",
        "",
        f"model_type `{s.family}`, {model_cfg.num_layers} layers, hidden {model_cfg.hidden_size}, "
        f"{loops}; dtype {dtype_name}. Written by loopcoder's scripts/export_hf.py.",
        "",
        "## Which tools load this directory",
        "",
        f"- transformers: {s.transformers}.",
        f"- vLLM and SGLang (their published loaders): {s.published}.",
    ]
    if s.served_differently:
        lines += ["", "**Do not serve this directory with vLLM or SGLang**: it was exported with "
                  f"{ALLOW_FLAG}."]
    if code:
        lines += ["", "Load it with", "", code.rstrip("\n")]
    return "\n".join(lines) + "\n"
