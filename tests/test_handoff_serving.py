"""Every export says truthfully, in its warning and in its README.md, which tools load it; one
that vLLM/SGLang would load but compute differently is refused unless asked for
(--allow-served-differently), exit 2 with a paragraph naming the flag, nothing written.

The published loaders' keys against our model's settings (handoff/loaders.py): R=1 is a Llama
(everything loads it), the two published families are served as themselves, shared_kv=false
cannot be loaded by them (no gate tensors), clp=false with the hidden gate would be served with
the cross-loop shift it never had.
"""

import json
import logging

import pytest

from tests.fixtures import exported, model_and_config

pytestmark = pytest.mark.usefixtures("megatron_world")

SERVED = "vLLM and SGLang (their published loaders): yes"
NOT_LOADED = "vLLM and SGLang (their published loaders): no"


@pytest.mark.parametrize("overrides, transformers_line, published", [
    (dict(num_loops=1), "natively: LlamaForCausalLM", SERVED),
    (dict(num_loops=2), "trust_remote_code=True", SERVED),
    (dict(num_loops=3, gate_input="query"), "trust_remote_code=True", SERVED),
    (dict(num_loops=2, clp=False, gate_input="query"), "trust_remote_code=True", SERVED),
    (dict(num_loops=2, shared_kv=False), "trust_remote_code=True", NOT_LOADED),
    (dict(num_loops=3, clp=False, shared_kv=False), "trust_remote_code=True", NOT_LOADED),
], ids=["R1-llama", "R2", "R3-query", "iquest-loop", "shared-kv-off", "clp-and-shared-kv-off"])
def test_readme_and_warning_say_which_tools_load_the_export(tmp_path, caplog, overrides,
                                                           transformers_line, published):
    ours, cfg = model_and_config(**overrides)
    with caplog.at_level(logging.WARNING, logger="handoff.export"):
        exported(ours, cfg, tmp_path)
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert transformers_line in readme and published in readme, readme
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "handoff.export")
    if published == NOT_LOADED:
        assert "vLLM and SGLang: no" in warned and "gate" in warned
        assert "would serve it as a PLT" not in warned  # untrue for this model
    else:
        assert not warned


def test_an_export_the_published_loaders_would_compute_differently_is_refused(tmp_path, capsys):
    from pretrain.errors import run_tool
    from scripts import export_hf
    from tests.fixtures import write_checkpoint

    ours, cfg = model_and_config(num_loops=2, clp=False, gate_input="hidden")
    write_checkpoint(ours, cfg, str(tmp_path / "checkpoint"))
    argv = ["--checkpoint", str(tmp_path / "checkpoint"), "--out", str(tmp_path / "hf")]
    assert run_tool(export_hf.main, argv) == 2
    err = capsys.readouterr().err
    assert "--allow-served-differently" in err and "Traceback" not in err
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.tmp*"))

    assert run_tool(export_hf.main, argv + ["--allow-served-differently"]) == 0
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert "Do not serve this directory with vLLM or SGLang" in readme
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["plt_clp"] is False


def test_config_only_is_refused_the_same_way(tmp_path, capsys):
    from pretrain.errors import run_tool
    from scripts import export_hf

    argv = ["--config-only", "model=plt_tiny", "model.clp=false", "--out", str(tmp_path / "c")]
    assert run_tool(export_hf.main, argv) == 2
    assert "--allow-served-differently" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    assert run_tool(export_hf.main, ["--allow-served-differently"] + argv) == 0
