"""DeepSpeed, an optional dependency: the version this project is tested with and the one import
that says how to install it. Both the engine (pretrain/engines/deepspeed.py) and its checkpoint
payload (pretrain/engines/deepspeed_checkpoint.py) import DeepSpeed through here, so neither needs
the other for it."""

from __future__ import annotations

import importlib.util

DEEPSPEED_PIN = "deepspeed==0.19.8"
DEEPSPEED_INSTALL_HINT = (
    f"engine=deepspeed needs the DeepSpeed package: pip install 'loopcoder[deepspeed]' "
    f"(or pip install {DEEPSPEED_PIN} --no-build-isolation, torch already installed)")


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as error:
        raise ImportError(DEEPSPEED_INSTALL_HINT) from error
    return deepspeed
