"""The README reader (tests/readme_reader.py) on a sample of every kind of block, fast."""

import shlex

from tests.readme_reader import drop_optional, program_of, readme_commands

SAMPLE = """Text.

    python -m scripts.plot_run outputs/<run>   # a '#' in a comment
    torchrun --nproc_per_node=2 -m pretrain.train a.b='x # y' \\
        c.d=[1,2] [e.f=...]

- a list item
  continued

```sh
pip install -e '.[gpu]'    # [GPU] dry run: add --dry-run
make test                  # [test suite]
```

```python
import os
```

    model/      the model
    data/       the data
"""


def test_the_readme_reader_finds_commands_in_both_kinds_of_block():
    commands = readme_commands(SAMPLE)
    assert [(c.line, c.kind, c.code) for c in commands] == [
        (3, "shell", "python -m scripts.plot_run outputs/<run>"),
        (4, "shell", "torchrun --nproc_per_node=2 -m pretrain.train a.b='x # y' c.d=[1,2] [e.f=...]"),
        (11, "shell", "pip install -e '.[gpu]'"),
        (12, "shell", "make test"),
        (16, "python", "import os")]
    assert commands[0].comment == "a '#' in a comment"
    assert drop_optional(commands[1].code).endswith("c.d=[1,2]")
    assert commands[2].run_form() == "pip install -e '.[gpu]' --dry-run"
    assert commands[3].run_form() is None
    assert program_of(shlex.split(commands[1].code)) == (
        "pretrain.train", ["a.b=x # y", "c.d=[1,2]", "[e.f=...]"])
