"""Entry point: `python -m pretrain.train [hydra overrides]` (also under torchrun or srun).

Wires the pieces together and nothing more: config (resolved and validated once) -> process
groups -> the Trainer (pretrain/trainer.py: data, engine, the Checkpointer that starts or resumes
the run, the loop) -> a code sample.

Every run folder gets config.yaml (the resolved config) and resume.yaml, which composes exactly that
config again: `python -m pretrain.train --config-dir RUN_DIR --config-name resume [overrides]`
continues the run as it was configured, whatever the defaults are by then, in RUN_DIR wherever it
has been moved or copied to (pretrain/run_folder.py).

Exit status (pretrain/errors.py): 0 done; 2 a config error, 3 a data error, 4 a checkpoint error,
5 the run diverged: each with a one-paragraph message and the fix, no traceback; 75 (EXIT_REQUEUE)
stopped by SIGUSR1/SIGTERM after saving a checkpoint; 1 anything unexpected (with its traceback).
SIGUSR2 prints every thread's stack and the run goes on (pretrain/signals.py).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# megatron-core's notes about optional GPU packages and a deprecated default: noise in every run.
for _message in (".*Transformer Engine and Apex are not installed.*", "Apex is not installed.*",
                 "full scope is deprecated.*"):
    warnings.filterwarnings("ignore", message=_message)

# Only light imports at module level: megatron-core's checkpoint writer starts a helper process
# with multiprocessing's "spawn", which re-imports this (the main) module; importing torch and
# megatron here cost every saving process ~7 s more. The heavy modules are imported where they
# are used, and the config schema is registered in the `__main__` guard below.
import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("pretrain")
for noisy in ("megatron", "torch.distributed.checkpoint"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_dir(cfg: DictConfig) -> str:
    # Hydra's output dir is derived from run_dir (conf/config.yaml): run_dir itself for a single
    # run, run_dir/<job> in a sweep. That folder is the run's folder.
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.output_dir
    return os.path.abspath(cfg.run_dir)


def run(cfg: DictConfig) -> int:
    from pretrain.config import Config, validate
    from pretrain.distributed import (broadcast_object, init_model_parallel, shutdown_distributed,
                                      start_processes)
    from pretrain.run_folder import check_resumed_in_place

    cfg.run_dir = _run_dir(cfg)
    check_resumed_in_place(cfg)
    # The processes meet first (parallel.backend is all that needs), so that the config is resolved
    # and validated once: a time-stamped run_dir may differ between ranks (multi-node torchrun, a
    # user's own ${now:}), and rank 0's folder is the run's folder, with the paths derived from it
    # (checkpoint.dir, ...). Every rank validates the same config, so all refuse it together.
    world = start_processes(cfg.parallel.backend)
    try:
        cfg.run_dir = broadcast_object(cfg.run_dir)
        config: Config = OmegaConf.to_object(cfg)
        # The parallel layout (pretrain/layout.py), derived once; validate() settles the micro
        # batch into the config for this world.
        layout = validate(config, world.world_size)
        init_model_parallel(layout.tp, layout.pp, layout.vpp, config.train.seed)
        return _train(config, world, layout)
    finally:
        shutdown_distributed()


def _train(config, world, layout) -> int:
    from evaluation.during_training import evaluate_code  # the entry wires in what pretrain/
    from handoff.import_hf import import_for_run          # may not import (docs/architecture.md)
    from model.kernels import resolve_backend
    from pretrain.collective import on_main
    from pretrain.engines.base import params_dtype
    from pretrain.run_folder import write_run_config
    from pretrain.signals import StopRequest
    from pretrain.trainer import Trainer

    # A backend that cannot train here (flash without flash-attn or on a CPU, flex on a CPU: no
    # backward there) is refused by every rank before anything is built or written, naming the
    # key (AttentionBackendUnsupported: exit 2).
    resolve_backend(config.model.attention_backend, world.device, params_dtype(config.train),
                    backward=True)
    if config.model.fused_elementwise:  # no compiler for its kernels here: exit 2, likewise
        from model.fused_elementwise import check_fused_elementwise
        check_fused_elementwise(world.device, params_dtype(config.train))
    # config.yaml: what runs, as validate() settled it for this world (the micro batch).
    settled = OmegaConf.structured(config)
    config_yaml, config_values = OmegaConf.to_yaml(settled), OmegaConf.to_container(settled)
    run_dir = config.run_dir
    os.makedirs(run_dir, exist_ok=True)
    # Rank 0 writes them, every rank learns whether it could (a full disk: exit 4 on all ranks,
    # none left waiting in a collective), and the previous files stay whole (atomic writes).
    on_main(f"cannot write the run's config.yaml and resume.yaml into {run_dir}; free space there "
            f"(or pass another run_dir) and start again",
            lambda: write_run_config(run_dir, config_yaml, config_values))
    stop = StopRequest.install()
    try:
        trainer = Trainer(config, world, layout, stop, config_yaml=config_yaml,
                          config_values=config_values, evaluate_code=evaluate_code,
                          hf_importer=import_for_run)
        status = trainer.train()
        if status == 0:
            _print_sample(config, trainer.engine, trainer.data.tokenizer, world, layout)
        return status
    finally:
        stop.finish()


def _print_sample(config, engine, tokenizer, world, layout) -> None:
    """The end-of-run code sample. It never fails a run that trained: a pipeline-split model is
    skipped (decoding needs every layer on a rank), and any error is logged, not raised."""
    sample_cfg = config.sample
    if sample_cfg.max_new_tokens <= 0:
        return
    if not layout.whole_model_on_each_rank:
        if world.is_main:
            log.info("no end-of-run sample: decoding needs the whole model on a rank (parallel.pp=%d); "
                     "generate from the checkpoint with scripts/generate.py", config.parallel.pp)
        return
    import torch

    from model.generation import sample

    try:
        prompt = torch.tensor([tokenizer.encode(sample_cfg.prompt)], dtype=torch.long,
                              device=world.device)
        generator = torch.Generator(device=world.device).manual_seed(config.train.seed)
        tokens = sample(engine.inference_model, prompt, sample_cfg.max_new_tokens,
                        temperature=sample_cfg.temperature,
                        top_p=sample_cfg.top_p, eos_id=tokenizer.eod_id, generator=generator)
    except Exception as error:  # noqa: BLE001 the run trained and saved: report, do not fail it
        log.warning("no end-of-run sample: %s: %s", type(error).__name__, error)
        return
    if world.is_main:
        text = tokenizer.decode([i for i in tokens[0].tolist() if i != tokenizer.eod_id])
        log.info("sample (%d new tokens, temperature %s):\n%s\n%s\n%s", tokens.shape[1] -
                 prompt.shape[1], sample_cfg.temperature, "-" * 60, text, "-" * 60)


def _exit_on_user_error(error: Exception) -> None:
    """A user error (pretrain/errors.py: config, data, checkpoint, divergence) exits with its
    class's status and one paragraph; anything else is a bug and keeps its traceback."""
    from pretrain.errors import describe_user_error

    described = (_describe_yaml_error(error) or _describe_full_disk(error)
                 or describe_user_error(error))
    if described is None:
        raise error
    code, message = described
    log.error(message)
    sys.exit(code)


def _diverged_in_a_sweep(error: Exception) -> bool:
    """A -m sweep (a study's grid: conf/experiment/clp_ablation.yaml) goes on past a job that
    diverged: the divergence is that cell's result, in its metrics.jsonl (the skipped steps, no
    row at train.max_steps) and in the log; exiting would leave every later cell unrun. A config,
    data or checkpoint error still stops the sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pretrain.errors import DivergedError, describe_user_error

    if not (isinstance(error, DivergedError) and HydraConfig.initialized()
            and HydraConfig.get().mode == RunMode.MULTIRUN):
        return False
    log.error("%s; the sweep goes on with its next job", describe_user_error(error)[1])
    return True


def _describe_yaml_error(error: Exception):
    """A config file that is not YAML (a hand-edited or damaged resume.yaml: the trainer writes it
    whole, pretrain/run_folder.py) is the user's to fix: exit 2, naming the file and the line."""
    import yaml

    from pretrain.errors import EXIT_CONFIG

    if not isinstance(error, yaml.YAMLError):
        return None
    mark = getattr(error, "problem_mark", None)
    where = (f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None
             else "a config file")
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return EXIT_CONFIG, (
        f"config error: {where} is not valid YAML ({problem}). Correct the file there; a run "
        f"folder's resume.yaml is written whole at every start, so a broken one was edited or "
        f"damaged since: the run's resolved values are also in config.yaml beside it")


def _describe_full_disk(error: Exception):
    """A full disk (or quota) where the run writes, e.g. Hydra's own files in the run folder at
    start: exit 4 like a checkpoint that cannot be written, naming the file."""
    import errno

    from pretrain.errors import EXIT_CHECKPOINT

    if not (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)):
        return None
    # The log file is on that disk too: its handler's failure must not add a traceback.
    logging.raiseExceptions = False
    where = error.filename
    if where is None:  # Hydra's own files, written before the config exists: the command names it
        named = [a.split("=", 1)[1] for a in sys.argv if a.startswith("run_dir=")]
        folder = named[-1] if named else (sys.argv[sys.argv.index("--config-dir") + 1]
                                         if "--config-dir" in sys.argv[:-1] else None)
        where = f"into the run folder {folder}" if folder else None
    return EXIT_CHECKPOINT, (
        f"checkpoint error: cannot write {where or 'a file of the run'}: {error.strerror}; "
        f"free space on that disk (or pass run_dir / checkpoint.dir on another one) and start "
        f"again: the run resumes from its last checkpoint")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        status = run(cfg)
    except Exception as error:  # noqa: BLE001 sorted into user errors and bugs
        if _diverged_in_a_sweep(error):
            return
        _exit_on_user_error(error)
    if status:
        sys.exit(status)


def cli() -> None:
    """`python -m pretrain.train`. Errors in composing the config (an unknown key, a wrong type)
    happen before main() runs; Hydra turns every exception into exit 1 unless HYDRA_FULL_ERROR is
    set, so set it and sort them here too."""
    from pretrain.signals import dump_stacks_on_request, ignore_stop_signals

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    dump_stacks_on_request()
    try:
        main()
    except Exception as error:  # noqa: BLE001 sorted into user errors and bugs
        _exit_on_user_error(error)  # composing the config: main() sorts what run() raises
    finally:
        ignore_stop_signals()  # the exit status (75 after a stop) must not become a death by signal


if __name__ == "__main__":
    from pretrain.config import register

    register()  # the schema, conf/config.yaml's base_config
    cli()
