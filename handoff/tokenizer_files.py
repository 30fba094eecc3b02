"""Our sentencepiece tokenizer as Hugging Face tokenizer files that give the same ids.

    write_tokenizer_files(tokenizer, folder, max_length)   # tokenizer.model, tokenizer.json,
                                                           # tokenizer_config.json,
                                                           # special_tokens_map.json

`AutoTokenizer.from_pretrained(folder)` then loads a stock `PreTrainedTokenizerFast` (no remote
code) from tokenizer.json: a BPE over our pieces with the merges ranked as sentencepiece ranks
them (by the merged piece's score, i.e. its id among the normal pieces), byte fallback, and the
options of data/tokenizer.py reproduced: no normalization but spaces written as U+2581 (what
sentencepiece's identity rule still does), no dummy prefix, digits split one by one, no BOS or EOS
added. Control symbols (<s>, </s>, <pad>, <fim_*>) are special tokens reachable by id only:
`split_special_tokens` keeps text such as "<fim_prefix>" plain, as sentencepiece does.
tests/test_handoff_tokenizer.py checks the ids on a few hundred stdlib files.

The sentencepiece model itself is copied as tokenizer.model (what the tokenizer was built from).
"""

from __future__ import annotations

import json
import os
import shutil

from sentencepiece import sentencepiece_model_pb2

NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6  # sentencepiece's piece types


def _proto(model_path: str):
    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as stream:
        proto.ParseFromString(stream.read())
    return proto


def _check_options(proto, model_path: str) -> None:
    """The tokenizer.json below reproduces data/tokenizer.py's options; refuse others."""
    normalizer, trainer = proto.normalizer_spec, proto.trainer_spec
    expected = {"model_type": (trainer.model_type, 2), "normalization": (normalizer.name, "identity"),
                "add_dummy_prefix": (normalizer.add_dummy_prefix, False),
                "remove_extra_whitespaces": (normalizer.remove_extra_whitespaces, False),
                "escape_whitespaces": (normalizer.escape_whitespaces, True),
                "byte_fallback": (trainer.byte_fallback, True)}
    wrong = {key: got for key, (got, want) in expected.items() if got != want}
    if wrong:
        raise ValueError(f"{model_path}: sentencepiece options {wrong} differ from loopcoder's "
                         "(data/tokenizer.py: BPE, identity, no dummy prefix, byte fallback); its "
                         "Hugging Face tokenizer would give other ids: retrain it with "
                         "scripts/train_tokenizer.py")


def tokenizer_json(model_path: str) -> dict:
    """The `tokenizers` definition (as a dict) equal to the sentencepiece model's encoding."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = _proto(model_path)
    _check_options(proto, model_path)
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    normal = {piece.piece: i for i, piece in enumerate(proto.pieces) if piece.type == NORMAL}
    merges = []
    for piece, _ in sorted(normal.items(), key=lambda item: item[1]):  # best score first
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                  if piece[:k] in normal and piece[k:] in normal]
        merges.extend(sorted(splits, key=lambda pair: (normal[pair[0]], normal[pair[1]])))
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk,
                                     byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    if proto.trainer_spec.split_digits:
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d"), behavior="isolated")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    specials = [piece.piece for piece in proto.pieces if piece.type in (CONTROL, 2)]  # 2 = unknown
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return json.loads(tokenizer.to_str())


def write_tokenizer_files(tokenizer, folder: str, max_length: int) -> dict:
    """Write the tokenizer files of `tokenizer` (a data.tokenizer.CodeTokenizer) into `folder`;
    returns the special ids written ({"bos_token_id", "eos_token_id", "pad_token_id"})."""
    shutil.copyfile(tokenizer.model_path, os.path.join(folder, "tokenizer.model"))
    with open(os.path.join(folder, "tokenizer.json"), "w") as stream:
        json.dump(tokenizer_json(tokenizer.model_path), stream, ensure_ascii=False)
    sp = tokenizer.sp
    names = {"bos_token": sp.id_to_piece(tokenizer.bos_id), "eos_token": sp.id_to_piece(tokenizer.eod_id),
             "pad_token": sp.id_to_piece(tokenizer.pad_id), "unk_token": sp.id_to_piece(sp.unk_id())}
    config = dict(names, tokenizer_class="PreTrainedTokenizerFast", model_max_length=max_length,
                  add_bos_token=False, add_eos_token=False, clean_up_tokenization_spaces=False,
                  split_special_tokens=True,
                  extra_special_tokens=[sp.id_to_piece(i) for i in (
                      tokenizer.fim_prefix_id, tokenizer.fim_middle_id, tokenizer.fim_suffix_id)])
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as stream:
        json.dump(config, stream, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as stream:
        json.dump(names, stream, indent=2)
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eod_id,
            "pad_token_id": tokenizer.pad_id}


# -- reading a directory's tokenizer (handoff/read.py) -----------------------------------------------
def _not_a_tokenizer(path: str, kind: str, problem: str):
    from handoff.published_config import PublishedFormatError

    raise PublishedFormatError(
        f"{path} is not a {kind} ({problem}); copy it again from the model's source (or export "
        "the directory again)")


def _tokenizer_json_ids(path: str) -> int:
    from tokenizers import Tokenizer

    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
        definition = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        _not_a_tokenizer(path, "tokenizers definition", f"not JSON: {error}")
    if not isinstance(definition, dict) or not isinstance(definition.get("model"), dict):
        _not_a_tokenizer(path, "tokenizers definition", "JSON without a \"model\" object: another "
                         "kind of file")
    try:
        ids = Tokenizer.from_str(text).get_vocab(with_added_tokens=True).values()
    except Exception as error:  # noqa: BLE001 the tokenizers library raises plain Exception
        _not_a_tokenizer(path, "tokenizers definition", str(error))
    return max(ids) + 1 if ids else 0


def _sentencepiece_ids(path: str) -> int:
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=path).get_piece_size()
    except (RuntimeError, OSError) as error:
        _not_a_tokenizer(path, "sentencepiece model", str(error))


def tokenizer_vocab_sizes(hf_dir: str) -> list:
    """[(ids the tokenizer can produce, its path)] for each of tokenizer.json and tokenizer.model
    the directory has, each parsed by its own library (import_hf copies tokenizer.model into the
    checkpoint and evaluate --hf encodes with it: a damaged one is refused here, by name)."""
    from handoff.safetensors_files import file_in

    found = []
    for name, count in (("tokenizer.json", _tokenizer_json_ids),
                        ("tokenizer.model", _sentencepiece_ids)):
        path = os.path.join(hf_dir, name)
        if not os.path.lexists(path):
            continue
        if not os.path.isfile(path):  # a FIFO would block the read, a dangling link fail it
            _not_a_tokenizer(path, "regular file", "a folder, a dangling link or a device")
        found.append((count(file_in(hf_dir, name)), path))
    return found
