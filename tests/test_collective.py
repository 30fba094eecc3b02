"""pretrain/collective.py: a rank's own failure is logged before the ranks agree on it, so a hang in
that agreement (the other ranks waiting inside fn's own collectives) still shows its cause. One
line, no traceback: user errors stay one paragraph (pretrain/errors.py)."""

import logging

import pytest

from pretrain.collective import collectively
from pretrain.errors import CheckpointError


def test_a_failure_is_logged_before_the_ranks_agree(caplog):
    def write():
        raise OSError("disk full")

    with caplog.at_level(logging.ERROR, logger="pretrain.collective"):
        with pytest.raises(CheckpointError, match=r"cannot write \(rank 0: OSError: disk full\)"):
            collectively("cannot write", write)
    [record] = caplog.records
    assert record.getMessage() == "rank 0: cannot write: OSError: disk full"
    assert record.exc_info is None
