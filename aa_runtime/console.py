"""What every command line of the project shares: quiet libraries, and a user error printed as one line."""
from __future__ import annotations

import logging
import os
import sys

import click


def quiet_libraries() -> None:
    """Keep library chatter (dtype-cast notices, hub hints) out of the user's terminal."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    # bitsandbytes (imported through peft) warns on AVX-512 CPUs about an optional kernels package it never needs
    # here; its loggers have no handler, so the warning would reach stderr through logging's last resort
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from diffusers.utils import logging as diffusers_logging  # already imported modules read no env var

    diffusers_logging.set_verbosity_error()


def fail(e: Exception) -> None:
    """Print a user error as one line and exit 2."""
    click.echo(f"error: {e}", err=True)
    sys.exit(2)
