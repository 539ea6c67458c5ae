"""How a training job stops early and asks to be run again.

:data:`STOP_SIGNALS` make ``qgen train`` checkpoint and exit with :data:`EXIT_STOPPED` (``EX_TEMPFAIL``):
the job did not fail, the same command resumes it, and Snakemake retries it. SIGTERM is ``scancel`` and
preemption, SIGUSR1 SLURM's time-limit warning (``--signal=USR1@300``), SIGINT Ctrl-C. A pack of runs
(:mod:`qgen.packing`) passes the same signals on to its members. Torch-free.
"""

from __future__ import annotations

import signal

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_STOPPED = 75
