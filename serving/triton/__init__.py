"""The tritonserver bundled in nvidia-pytriton, run as a local process (launcher) with a CLI.

Importing this package needs no extra; `launcher.start` raises TritonNotInstalled without it.
"""

from serving.triton.launcher import (
    TritonHandle,
    TritonLaunchError,
    TritonNotInstalled,
    TritonNotRunning,
    TritonServer,
    load_model,
    start,
    status,
    stop,
)

__all__ = ["TritonHandle", "TritonLaunchError", "TritonNotInstalled", "TritonNotRunning", "TritonServer",
           "load_model", "start", "status", "stop"]
