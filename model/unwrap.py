"""`unwrap(module)`: the bare model under its training wrappers."""


def unwrap(module):
    """The model under megatron's DDP / Float16Module or DeepSpeed's engine (each keeps the wrapped
    module as `.module`): the object whose keys checkpoints use and whose methods tools call."""
    while hasattr(module, "module"):
        module = module.module
    return module
