"""Which W&B mode a run logs in: shared by the eval launcher and the report.

Logged in (``$WANDB_API_KEY`` or a netrc entry for the W&B host): online. Not logged in:
offline, without the interactive login prompt W&B would otherwise show (which hangs a batch
job), and with a note saying how to upload later. ``WANDB_MODE`` (make variable or
environment) overrides both.
"""

from __future__ import annotations

import netrc
import os
import sys
from urllib.parse import urlparse

MODES = ("online", "offline", "disabled")


class WandbModeError(ValueError):
    """An unknown WANDB_MODE; the message is one line."""


def wandb_logged_in() -> bool:
    """True if W&B has a key without asking: $WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def choose_wandb_mode(requested: str) -> str:
    """online, offline or disabled, from the request, $WANDB_MODE, then the login state."""
    mode = requested or os.environ.get("WANDB_MODE", "")
    if mode == "dryrun":  # W&B's older name for offline
        return "offline"
    if mode in MODES:
        return mode
    if mode:
        raise WandbModeError(f"WANDB_MODE={mode!r}: use {', '.join(MODES)}")
    if wandb_logged_in():
        return "online"
    print(
        "W&B: not logged in, so this run logs offline (no prompt); "
        "upload later with `wandb sync` (command printed at the end), or `wandb login` first.",
        file=sys.stderr,
    )
    return "offline"
