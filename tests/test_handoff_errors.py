"""Bad input to the hand-off gets one clear error naming the file and the fix, and nothing is
written: unknown model_type, a missing or extra tensor, a shape config.json disagrees with, a
tokenizer with more ids than the model, pickles where safetensors are expected (never unpickled)."""

import json
import os
import pickle

import pytest
from safetensors.torch import load_file, save_file

from handoff import PublishedFormatError, read_hf
from handoff.import_hf import import_hf

pytestmark = pytest.mark.usefixtures("megatron_world")


def _shard(hf_dir):
    index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
    return hf_dir / sorted(set(index["weight_map"].values()))[0], index


def _rewrite_shard(hf_dir, change):
    path, index = _shard(hf_dir)
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)
    index["weight_map"] = {n: f for n, f in index["weight_map"].items() if n in tensors or
                           f != path.name}
    index["weight_map"].update({n: path.name for n in tensors})
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


def _refused_without_writing(hf_dir, tmp_path, *expected):
    with pytest.raises(PublishedFormatError) as error:
        import_hf(str(hf_dir), str(tmp_path / "imported"))
    assert not (tmp_path / "imported").exists() or not os.listdir(tmp_path / "imported")
    for text in expected:
        assert text in str(error.value), str(error.value)
    return str(error.value)


def test_unknown_model_type(hf_copy, tmp_path):
    config = json.loads((hf_copy / "config.json").read_text())
    config["model_type"] = "mistral"  # llama is read (an R=1 model)
    (hf_copy / "config.json").write_text(json.dumps(config))
    _refused_without_writing(hf_copy, tmp_path, str(hf_copy / "config.json"), "'mistral'")


def test_missing_tensor(hf_copy, tmp_path):
    _rewrite_shard(hf_copy, lambda t: t.pop("model.embed_tokens.weight"))
    _refused_without_writing(hf_copy, tmp_path, "missing", "model.embed_tokens.weight")


def test_extra_tensor(hf_copy, tmp_path):
    import torch

    path = _rewrite_shard(hf_copy, lambda t: t.update({"model.layers.9.mlp.up_proj.weight":
                                                       torch.zeros(2, 2)}))
    _refused_without_writing(hf_copy, tmp_path, str(path), "model.layers.9.mlp.up_proj.weight")


def test_shape_disagreeing_with_config(hf_copy, tmp_path):
    config = json.loads((hf_copy / "config.json").read_text())
    config["intermediate_size"] = 96
    (hf_copy / "config.json").write_text(json.dumps(config))
    _refused_without_writing(hf_copy, tmp_path, "mlp.gate_proj.weight", "[128, 64]", "[96, 64]")


def test_tokenizer_larger_than_the_vocabulary(hf_copy, tmp_path):
    config = json.loads((hf_copy / "config.json").read_text())
    config["vocab_size"] = 500  # the tokenizer has 600 ids; shrink the tensors to match
    (hf_copy / "config.json").write_text(json.dumps(config))
    for path in hf_copy.glob("*.safetensors"):
        tensors = load_file(path)
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            if name in tensors:
                tensors[name] = tensors[name][:500].contiguous()
        save_file(tensors, path)
    _refused_without_writing(hf_copy, tmp_path, "tokenizer.json", "600 ids", "vocab_size is 500")


class _Trap:
    """Unpickling this writes a file: the proof that something unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_weights_are_refused_and_never_unpickled(hf_copy, tmp_path):
    marker = tmp_path / "unpickled"
    for path in hf_copy.glob("*.safetensors"):
        path.unlink()
    (hf_copy / "model.safetensors.index.json").unlink()
    (hf_copy / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(str(marker))))
    _refused_without_writing(hf_copy, tmp_path, "pytorch_model.bin", "pickle", "safetensors")
    # A pickle under a .safetensors name is refused by its header, unread.
    (hf_copy / "model.safetensors").write_bytes(pickle.dumps(_Trap(str(marker))))
    _refused_without_writing(hf_copy, tmp_path, "model.safetensors", "not a safetensors file")
    assert not marker.exists()


def test_loop_gate_proj_alias_reads_like_plt_gate(hf_copy, good_dir):
    import torch

    _rewrite_shard(hf_copy, lambda t: t.update({
        n.replace(".plt_gate.", ".loop_gate_proj."): t.pop(n) for n in list(t) if ".plt_gate." in n}))
    _, renamed = read_hf(str(hf_copy))
    _, original = read_hf(str(good_dir))
    assert all(torch.equal(renamed[name], original[name]) for name in original)


def test_export_refuses_a_non_empty_out_dir_and_leaves_it(good_dir, tmp_path):
    from pretrain.errors import EXIT_CONFIG, run_tool
    from scripts import export_hf

    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    checkpoint = os.path.join(os.path.dirname(good_dir), "checkpoint")
    assert run_tool(export_hf.main, ["--checkpoint", checkpoint, "--out", str(out)]) == EXIT_CONFIG
    assert sorted(os.listdir(out)) == ["mine.txt"]
    with pytest.raises(SystemExit):  # argparse refuses a dtype it does not offer
        export_hf.main(["--checkpoint", checkpoint, "--out", str(tmp_path / "new"),
                        "--dtype", "fp16"])
    assert not (tmp_path / "new").exists()
