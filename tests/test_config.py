"""The run config: Hydra + pretrain/config.py refuse typos, wrong types and impossible combinations
at start, naming the key. Composition is checked in-process (no training); one CLI run checks the
exit status a user sees."""

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretrain.config import Config, ConfigError, compose, validate
from tests.fixtures import output_of, run_trainer


def composed(*overrides) -> Config:
    return OmegaConf.to_object(compose(["run_dir=/tmp/unused", *overrides]))


def test_defaults_compose_to_the_default_job():
    cfg = composed()
    assert cfg.model.name == "plt_tiny" and cfg.model.num_loops == 2
    assert cfg.checkpoint.dir == "/tmp/unused/checkpoints"
    assert cfg.logging.wandb.mode == "offline"
    assert cfg.data.vocab_size <= cfg.model.vocab_size
    validate(cfg, world_size=1)


def test_unknown_key_is_named():
    with pytest.raises((HydraException, OmegaConfBaseException), match="max_stepz"):
        composed("train.max_stepz=3")


def test_wrong_type_is_named():
    with pytest.raises((HydraException, OmegaConfBaseException), match="train.seq_length"):
        composed("train.seq_length=abc")


def test_global_batch_must_divide_by_micro_batch_times_dp():
    cfg = composed("train.global_batch_size=12", "train.micro_batch_size=4")
    validate(cfg, world_size=1)
    with pytest.raises(ConfigError, match=r"train.global_batch_size=12 is not divisible by "
                                          r"train.micro_batch_size \* data-parallel size = 4 \* 2"):
        validate(cfg, world_size=2)


def test_the_micro_batch_splits_for_the_loops_as_pipeline_chunks():
    """pp=2, R=2: megatron's interleaved schedule runs a step's micro-batches in groups of pp. The
    unset micro batch splits each rank's share so; a set one that cannot is refused by name."""
    cfg = composed("parallel.pp=2")
    validate(cfg, world_size=2)
    assert cfg.train.micro_batch_size == 4  # the default global batch 8 on DP=1: 2 micro-batches
    with pytest.raises(ConfigError, match=r"1 micro-batch\(es\) per step .* needs a multiple of "
                                          r"parallel.pp=2"):
        validate(composed("parallel.pp=2", "train.micro_batch_size=8"), world_size=2)


def test_tp_must_divide_heads():
    cfg = composed("parallel.tp=3")
    with pytest.raises(ConfigError, match="parallel.tp=3 does not divide "
                                          "model.num_attention_heads=4"):
        validate(cfg, world_size=3)


def test_world_must_divide_by_tp_times_pp():
    cfg = composed("parallel.tp=2")
    with pytest.raises(ConfigError, match="world size 3 is not divisible by parallel.tp"):
        validate(cfg, world_size=3)


def test_cli_config_error_exits_2_with_the_message(tmp_path):
    result = run_trainer(tmp_path, "train.global_batch_size=6", "train.micro_batch_size=4",
                         "logging.wandb.mode=disabled")
    assert result.returncode == 2, output_of(result)
    assert "train.global_batch_size=6 is not divisible" in output_of(result)


def test_cli_typo_fails_naming_the_key(tmp_path):
    result = run_trainer(tmp_path, "train.max_stepz=3")
    assert result.returncode != 0
    assert "max_stepz" in output_of(result)


# Every numeric model field out of its range (model/config.py VALUE_RANGES): each trained NaN or
# nothing from step 1 and exited 0 with a checkpoint before it was refused at start.
MODEL_OUT_OF_RANGE = [
    ("norm_epsilon", "-1"), ("norm_epsilon", "0"), ("norm_epsilon", "nan"),
    ("rotary_base", "0"), ("rotary_base", "1"), ("rotary_base", "-10000"), ("rotary_base", "inf"),
    ("init_method_std", "0"), ("init_method_std", "-0.02"), ("clp_emb_scale", "nan"),
    ("clp_hidden_scale", "inf"), ("hidden_size", "0"), ("num_attention_heads", "0"),
    ("num_query_groups", "0"), ("ffn_hidden_size", "-1"), ("vocab_size", "0"),
    ("max_position_embeddings", "0"), ("num_layers", "0"), ("num_loops", "0"),
    ("swa_window", "0"), ("num_query_groups", "3"), ("num_attention_heads", "3"),
]


@pytest.mark.parametrize("field,value", MODEL_OUT_OF_RANGE)
def test_a_model_field_out_of_its_range_is_refused_by_name(field, value):
    cfg = composed(f"model.{field}={value}")
    with pytest.raises(ConfigError, match=rf"model\.{field}="):
        validate(cfg, world_size=1)


def test_the_range_check_reads_any_config_with_these_fields_under_its_own_names():
    """The Hugging Face import validates its config.json through the same table, in its names."""
    from model.config import PLTConfig, validate_values

    class Published:
        rotary_base, hidden_size = 0.0, 64

    with pytest.raises(ConfigError, match=r"rope_theta=0.0 is out of range: it must be a finite "
                                          r"number > 1"):
        validate_values(Published(), key={"rotary_base": "rope_theta"}.get)
    with pytest.raises(ConfigError, match=r"model.norm_epsilon=-1.0"):  # megatron's field name
        PLTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                  layernorm_epsilon=-1.0)


TRAIN_OUT_OF_RANGE = [
    ("train.lr", "nan"), ("train.lr", "-1e-3"), ("train.lr", "inf"), ("train.weight_decay", "-0.1"),
    ("train.adam_beta1", "1.0"), ("train.adam_beta2", "-0.5"), ("train.adam_eps", "0"),
    ("train.clip_grad", "-1"), ("train.clip_grad", "nan"), ("train.peak_tflops", "0"),
    ("train.max_skipped_steps", "-1"), ("train.seed", "-1"), ("sample.temperature", "-1"),
    ("sample.top_p", "0"), ("sample.max_new_tokens", "-1"), ("diagnostics.interval", "-1"),
    ("diagnostics.attention_queries", "-5"), ("eval.batches", "0"), ("eval.batches", "-2"),
]


@pytest.mark.parametrize("key,value", TRAIN_OUT_OF_RANGE)
def test_a_run_number_out_of_its_range_is_refused_by_name(key, value):
    cfg = composed(f"{key}={value}")
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')}="):
        validate(cfg, world_size=1)


def test_flash_attention_where_it_cannot_run_exits_2_before_the_run_folder_is_written(tmp_path):
    """model.attention_backend=flash without flash-attn or a GPU (here: a CPU) was a traceback,
    exit 1, from inside the model; now every rank refuses it at start, naming the key and the fix
    (and the tools that build a model from a checkpoint, through describe_user_error)."""
    from model.kernels import FlashAttentionUnavailable
    from pretrain.errors import describe_user_error

    result = run_trainer(tmp_path, "model.attention_backend=flash", "logging.wandb.mode=disabled")
    assert result.returncode == 2, output_of(result)
    assert "model.attention_backend=flash" in output_of(result)
    assert "attention_backend=torch" in output_of(result) and "Traceback" not in output_of(result)
    assert not (tmp_path / "config.yaml").exists()
    assert describe_user_error(FlashAttentionUnavailable("x"))[0] == 2
