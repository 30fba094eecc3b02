"""The checkpoint frame's error: a checkpoint that could not be written or read."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read. Raised on every rank together when writing
    (failure decisions are collective); the message names the folder, the file and the way out."""
