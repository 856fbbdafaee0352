"""Run the ``asr`` command line in this process and SIGKILL the process right after the trainer has written
a given checkpoint: a kill at a known point of a training run, with nothing in the library added for it.

    python tests/helpers/kill_after_checkpoint.py checkpoint-4.pt train --exp-dir exp ...

``Trainer.save`` is wrapped: once it has written (atomically, see ``asr.checkpoint.save_atomic``) and
logged ``<exp_dir>/<name>``, the process sends itself SIGKILL, which no handler can catch and which skips
every clean-up, as when a machine is preempted. Killing from outside when the file appears would race
with the next batches and saves. A run that ends without ever saving ``<name>`` exits with status
``NOT_KILLED``, so the caller can tell "never reached" from the kill (return code ``-SIGKILL``).
"""

from __future__ import annotations

import os
import signal
import sys

from asr import cli
from asr.training.trainer import Trainer

NOT_KILLED = 3


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    name, asr_argv = argv[0], argv[1:]
    save = Trainer.save

    def save_then_die(self: Trainer, checkpoint_name: str) -> None:
        save(self, checkpoint_name)
        if checkpoint_name == name:
            os.kill(os.getpid(), signal.SIGKILL)

    Trainer.save = save_then_die
    status = cli.main(asr_argv)
    print(f"kill_after_checkpoint: {name} was never saved; asr exited with status {status}", file=sys.stderr)
    return NOT_KILLED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
