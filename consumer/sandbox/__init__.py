"""The HighLevel sandbox: an emulator of the v2 Contacts API for tests, demo and benchmarks.

``run_sandbox(...)`` serves one in-process (an async context manager yielding a
:class:`Sandbox` with its ``url`` and ``state``); ``sandbox_process(...)`` runs
``python -m consumer sandbox`` as a child process; ``ghl-consumer sandbox``, the command line,
lives with the other commands (``consumer.commands.sandbox``); ``admin.read_contacts`` reads a
running sandbox's contacts over HTTP (for ``ghl-consumer audit``).
"""

from consumer.sandbox.process import SandboxProcess, sandbox_process
from consumer.sandbox.server import Sandbox, run_sandbox
from consumer.sandbox.settings import DuplicateSettings, Faults, RateLimits

__all__ = [
    "DuplicateSettings",
    "Faults",
    "RateLimits",
    "Sandbox",
    "SandboxProcess",
    "run_sandbox",
    "sandbox_process",
]
