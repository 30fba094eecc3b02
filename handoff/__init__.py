"""The Hugging Face hand-off: our checkpoints in the published LoopCoder layout and back
(docs/spec.md#published-formats; docs/architecture.md#contracts).

    read_hf(hf_dir) -> (ModelConfig, {our name: tensor})   the trainer's checkpoint.init_from
    export_checkpoint(checkpoint, out_dir, ...)              python -m scripts.export_hf
    import_hf(hf_dir, checkpoint_dir)                        python -m scripts.import_hf (import_hf.py)

One job per file: published_config (config.json <-> ModelConfig, both families and Llama for
R=1), tensor_names (weight names and fused layouts), safetensors_files (streaming shards, never
pickle), tokenizer_files (tokenizer.json equal to our sentencepiece), hf_files/ (the transformers
implementation copied into every exported directory), loaders (which tools load an export: its
README.md), llama_block (a Llama as the block of a looped model), read (verify and load a
directory), import_hf (a directory as a checkpoint), export (write one); what reading checks:
safetensors_header (a shard's header against its bytes), published_values (config.json's types
and ranges); the float dtypes and finite values of weights: pretrain/checkpoint/weight_checks.py.
"""

from handoff.published_config import PublishedFormatError
from handoff.read import read_hf

__all__ = ["PublishedFormatError", "read_hf"]
