"""A damaged or hostile Hugging Face directory is refused by `scripts.import_hf` with exit 4 and one
paragraph naming the file, never a traceback, and leaves no --out behind: one row per kind of
damage (shards, their headers, the index, config.json's types and ranges, the tokenizer files,
weights that cannot train, files outside the directory). A few rows run the real CLI; the rest
run its main in-process through run_tool, as the CLI does.
"""

import json
import math
import os
import struct
import subprocess
import sys

import pytest
import torch

from pretrain.errors import EXIT_CHECKPOINT, run_tool
from tests.fixtures import REPO, subprocess_env

pytestmark = pytest.mark.usefixtures("megatron_world")
INDEX = "model.safetensors.index.json"


# -- ways to damage a directory: each returns the file the message must name ---------------------
def _shard(hf):
    return hf / sorted(set(json.loads((hf / INDEX).read_text())["weight_map"].values()))[0]


def _split(path):
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _write(path, header_bytes: bytes, data: bytes):
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)


def _rewrite_header(change):
    def damage(hf):
        path = _shard(hf)
        header, data = _split(path)
        data = change(header, data) or data
        _write(path, json.dumps(header).encode(), data)
        return path
    return damage


def _last(header):
    return max((k for k in header if k != "__metadata__"),
               key=lambda k: header[k]["data_offsets"][1])


def _first(header):
    return min((k for k in header if k != "__metadata__"),
               key=lambda k: header[k]["data_offsets"][0])


def _claims_larger(header, data):
    entry = header[_last(header)]
    entry["shape"] = [entry["shape"][0] * 4] + entry["shape"][1:]
    begin = entry["data_offsets"][0]
    entry["data_offsets"][1] = begin + 4 * (entry["data_offsets"][1] - begin)


def _shape_without_offsets(header, data):
    entry = header[_first(header)]
    entry["shape"] = [entry["shape"][0] + 1] + entry["shape"][1:]


def _overlapping(header, data):
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"][0])
    second = header[names[1]]
    second["data_offsets"] = [o - 4 for o in second["data_offsets"]]


def _bad_dtype(header, data):
    header[_first(header)]["dtype"] = "F33"


def _shape_of_strings(header, data):
    header[_first(header)]["shape"] = ["64"]


def _raw_header(header_bytes: bytes):
    def damage(hf):
        path = _shard(hf)
        _, data = _split(path)
        _write(path, header_bytes, data)
        return path
    return damage


def _truncated(hf):
    path = _shard(hf)
    path.write_bytes(path.read_bytes()[:-1000])
    return path


def _trailing_bytes(hf):
    path = _shard(hf)
    path.write_bytes(path.read_bytes() + b"\0" * 64)
    return path


def _tensor_in_two_shards(hf):
    """A second shard holding the same tensors, named by the index for one of them."""
    import shutil

    second = hf / "model-00002-of-00002.safetensors"
    shutil.copyfile(_shard(hf), second)
    index = json.loads((hf / INDEX).read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = second.name
    (hf / INDEX).write_text(json.dumps(index))
    return second


def _random_bytes(hf):
    path = _shard(hf)
    path.write_bytes(os.urandom(4096))
    return path


def _length_past_the_end(hf):
    path = _shard(hf)
    raw = bytearray(path.read_bytes())
    raw[:8] = struct.pack("<Q", len(raw) * 10)
    path.write_bytes(bytes(raw))
    return path


def _file(name, content: bytes):
    def damage(hf):
        (hf / name).write_bytes(content)
        return hf / name
    return damage


def _config(**changes):
    def damage(hf):
        config = json.loads((hf / "config.json").read_text())
        config.update(changes)
        (hf / "config.json").write_text(json.dumps(config))
        return hf / "config.json"
    return damage


def _index(change):
    def damage(hf):
        index = json.loads((hf / INDEX).read_text())
        (hf / INDEX).write_text(json.dumps(change(index)))
        return hf / INDEX
    return damage


def _weight_map_to(target):
    def change(index):
        index["weight_map"] = {k: target for k in index["weight_map"]}
        return index
    return change


def _shard_elsewhere(hf, how):
    """The shard moved out of the directory (next to it) and named by `how`."""
    shard = _shard(hf)
    outside = hf.parent / "elsewhere.safetensors"
    os.replace(shard, outside)
    if how == "symlink":
        os.symlink(outside, shard)
        return hf / INDEX
    target = str(outside) if how == "absolute" else f"../{outside.name}"
    _index(_weight_map_to(target))(hf)
    return hf / INDEX


def _symlink_out(name):
    """`name` replaced by a symlink to a copy of it outside the directory."""
    def damage(hf):
        outside = hf.parent / f"outside-{name}"
        os.replace(hf / name, outside)
        os.symlink(outside, hf / name)
        return hf / name
    return damage


def _single_file(hf):
    """The sharded layout turned into the single-file one (model.safetensors, no index)."""
    os.replace(_shard(hf), hf / "model.safetensors")
    (hf / INDEX).unlink()
    return hf / "model.safetensors"


def _weights(change):
    """Every tensor of the shard changed by `change(name, tensor)` (None: unchanged)."""
    def damage(hf):
        from safetensors.torch import load_file, save_file

        path = _shard(hf)
        tensors = load_file(path)
        for name in list(tensors):
            tensors[name] = change(name, tensors[name])
        save_file(tensors, path)
        return path
    return damage


def _poison(value):
    def change(name, tensor):
        if name.endswith("mlp.up_proj.weight") and ".1." in name:
            tensor = tensor.clone()
            tensor.view(-1)[7] = value
        return tensor
    return change


DAMAGE = {
    # the shards and their headers
    "truncated shard": (_truncated, "truncated"),
    "header claims a larger tensor": (_rewrite_header(_claims_larger), "truncated"),
    "shape disagrees with offsets": (_rewrite_header(_shape_without_offsets), "needs"),
    "random bytes": (_random_bytes, "not a safetensors file"),
    "bytes after the last tensor": (_trailing_bytes, "belong to none"),
    "a tensor in two shards": (_tensor_in_two_shards, "is also in"),
    "header length past the end": (_length_past_the_end, "header claims"),
    "header not JSON": (_raw_header(b"{not json at all}   "), "not JSON"),
    "header a JSON list": (_raw_header(b"[1, 2, 3]"), "not a safetensors file"),
    "header not UTF-8": (_raw_header(b"{\xff\xfe\"a\": 1}"), "not JSON"),
    "bad dtype string": (_rewrite_header(_bad_dtype), "'F33'"),
    "shape of strings": (_rewrite_header(_shape_of_strings), "shape"),
    "overlapping offsets": (_rewrite_header(_overlapping), "overlap"),
    # the index
    "index not JSON": (_file(INDEX, b"\x00\x01 not json"), "not JSON"),
    "index a list": (_index(lambda index: [index]), "weight_map"),
    "index without weight_map": (_index(lambda index: {"metadata": {}}), "weight_map"),
    "weight_map of numbers": (_index(lambda index: {"weight_map": {"a": 1}}), "weight_map"),
    "shard by absolute path": (lambda hf: _shard_elsewhere(hf, "absolute"), "outside"),
    "shard by ../": (lambda hf: _shard_elsewhere(hf, "dotdot"), "outside"),
    "shard symlinked outside": (lambda hf: _shard_elsewhere(hf, "symlink"), "outside"),
    "single file symlinked outside": (lambda hf: _single_file(hf) and _symlink_out(
        "model.safetensors")(hf), "outside"),
    "index symlinked outside": (_symlink_out(INDEX), "outside"),
    "config.json symlinked outside": (_symlink_out("config.json"), "outside"),
    "tokenizer.model symlinked outside": (_symlink_out("tokenizer.model"), "outside"),
    "shard name with a NUL": (_index(_weight_map_to("model\x00.safetensors")), "NUL"),
    # config.json: not JSON, not an object, wrong types, out of range
    "config not JSON": (_file("config.json", b"{\"model_type\": "), "not JSON"),
    "config nested past the stack": (_file("config.json", b"[" * 100000 + b"]" * 100000),
                                     "not JSON"),
    "window of bools": (_config(plt_window_size=[True, 0]), "plt_window_size=[True, 0]"),
    "eps NaN": (_config(rms_norm_eps=math.nan), "rms_norm_eps=nan"),
    "config a list": (_file("config.json", b"[1, 2]"), "not the object"),
    "hidden_size a string": (_config(hidden_size="big"), "hidden_size='big'"),
    "rms_norm_eps negative": (_config(rms_norm_eps=-1.0), "rms_norm_eps=-1.0"),
    "rms_norm_eps zero": (_config(rms_norm_eps=0), "rms_norm_eps=0"),
    "rope_theta zero": (_config(rope_theta=0), "rope_theta=0"),
    "rope_theta a string": (_config(rope_theta="1e4"), "rope_theta='1e4'"),
    "no layers": (_config(num_hidden_layers=0), "num_hidden_layers=0"),
    "heads not dividing hidden": (_config(num_attention_heads=3), "does not divide"),
    "kv heads not dividing heads": (_config(num_key_value_heads=3), "num_key_value_heads=3"),
    "loops zero": (_config(plt_num_loops=0), "plt_num_loops=0"),
    "flag a string": (_config(tie_word_embeddings="yes"), "tie_word_embeddings='yes'"),
    "size a bool": (_config(vocab_size=True), "vocab_size=True"),
    "scale a string": (_config(plt_emb_scale="big"), "plt_emb_scale='big'"),
    # tokenizer files that are not tokenizers
    "tokenizer.json garbage": (_file("tokenizer.json", os.urandom(512)), "not a tokenizers"),
    "tokenizer.json empty": (_file("tokenizer.json", b""), "not a tokenizers"),
    "tokenizer.json of another kind": (_file("tokenizer.json", b'{"model_type": "llama"}'),
                                       "not a tokenizers"),
    "tokenizer.json bad model": (_file("tokenizer.json", b'{"model": {"type": "Nope"}}'),
                                 "not a tokenizers"),
    "tokenizer.model garbage": (_file("tokenizer.model", os.urandom(512)), "not a sentencepiece"),
    "tokenizer.model empty": (_file("tokenizer.model", b""), "not a sentencepiece"),
    "tokenizer.model JSON": (_file("tokenizer.model", b'{"vocab": {}}'), "not a sentencepiece"),
    "tokenizer.json a folder": (lambda hf: (hf / "tokenizer.json").unlink() or (
        hf / "tokenizer.json").mkdir() or hf / "tokenizer.json", "not a regular file"),
    # weights that cannot train
    "integer weights": (_weights(lambda n, t: t.to(torch.int32)), "F32, BF16, F16 or F64 only"),
    "bool weights": (_weights(lambda n, t: t != 0), "F32, BF16, F16 or F64 only"),
    "8-bit float weights": (_weights(lambda n, t: t.to(torch.float8_e4m3fn)), "as F8_E4M3"),
    "a NaN": (_weights(_poison(math.nan)), "1 NaN"),
    "an inf": (_weights(_poison(math.inf)), "1 infinite"),
    "a -inf in bf16": (_weights(lambda n, t: _poison(-math.inf)(n, t).to(torch.bfloat16)),
                       "1 infinite"),
}
# Run as a user runs them (python -m scripts.import_hf): one row of each family of damage.
CLI_ROWS = ("truncated shard", "a NaN")


def _assert_refused(code, output, named, expected, out):
    assert code == EXIT_CHECKPOINT, output
    assert "Traceback" not in output, output
    assert str(named) in output and expected in output, output
    assert output.strip().startswith("checkpoint error:") and output.strip().count("\n") == 0, output
    assert not out.exists(), "a refused import left its --out behind"


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_directory_is_refused_naming_the_file(kind, hf_copy, tmp_path, capsys):
    from scripts import import_hf

    damage, expected = DAMAGE[kind]
    named = damage(hf_copy)
    out = tmp_path / "imported"
    if kind in CLI_ROWS:
        result = subprocess.run([sys.executable, "-m", "scripts.import_hf", "--hf", str(hf_copy),
                                 "--out", str(out)], cwd=REPO, env=subprocess_env(),
                                capture_output=True, text=True, timeout=300)
        code, output = result.returncode, result.stdout + result.stderr
    else:
        capsys.readouterr()
        code = run_tool(import_hf.main, ["--hf", str(hf_copy), "--out", str(out)])
        captured = capsys.readouterr()
        code, output = code, captured.out + captured.err
    _assert_refused(code, output, named, expected, out)


def test_the_undamaged_directory_imports_and_float64_is_accepted(hf_copy, tmp_path, capsys):
    """The control of the table: the same directory imports, also with its weights in float64
    (a floating dtype: refusing it would be wrong), and a null head_dim means the default."""
    from scripts import import_hf

    _weights(lambda n, t: t.double())(hf_copy)
    _config(head_dim=None)(hf_copy)
    out = tmp_path / "imported"
    assert run_tool(import_hf.main, ["--hf", str(hf_copy), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert (out / "latest").is_file()


def test_the_hub_cache_layout_may_link_into_its_blobs(hf_copy, tmp_path):
    """huggingface_hub's cache keeps snapshots/<rev>/<file> as symlinks into ../../blobs/: that
    one way out of the directory is the standard download layout and stays readable."""
    from handoff import read_hf

    blobs, snapshot = tmp_path / "models--x" / "blobs", tmp_path / "models--x" / "snapshots" / "r1"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in hf_copy.iterdir():
        os.replace(path, blobs / path.name)
        os.symlink(os.path.join("..", "..", "blobs", path.name), snapshot / path.name)
    model_cfg, weights = read_hf(str(snapshot))
    assert model_cfg.num_loops == 2 and weights


def test_a_shard_that_cannot_be_read_is_named(hf_copy, tmp_path, monkeypatch, capsys):
    """An OSError while reading (permissions, an I/O error; injected: the tests run as root) is
    the file's checkpoint error, not a traceback."""
    from handoff import safetensors_header
    from scripts import import_hf

    shard = _shard(hf_copy)

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(safetensors_header.os.path, "getsize", unreadable)
    capsys.readouterr()
    out = tmp_path / "imported"
    code = run_tool(import_hf.main, ["--hf", str(hf_copy), "--out", str(out)])
    _assert_refused(code, capsys.readouterr().err, shard, "Permission denied", out)


def test_every_reader_refuses_a_shard_outside_the_directory(hf_copy, tmp_path):
    """import_hf (the table above), checkpoint.init_from and evaluate --hf share one reader."""
    from evaluation.load import load_hf
    from handoff import PublishedFormatError
    from handoff.import_hf import import_for_run
    from pretrain.checkpoint.init import _stage

    _shard_elsewhere(hf_copy, "dotdot")
    for read in (load_hf, lambda hf: _stage(hf, "megatron", str(tmp_path / "staging"), {},
                                            import_for_run)):
        with pytest.raises(PublishedFormatError, match="outside"):
            read(str(hf_copy))
    assert not (tmp_path / "staging").exists() or not os.listdir(tmp_path / "staging")
