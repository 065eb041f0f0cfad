"""Gates a test's policy handler stops at until the test opens them (one process).

    gate = new_gate("wedge")                  # in the test; the policy names it
    policy = gate_policy("wedge", '''
        def register(nimbus):
            @nimbus.on("smtp_server_ehlo", inline=True)
            def ehlo(domain, conn_meta, extensions):
                gate.reached.set()
                gate.opened.wait(30)           # a plain wait: this blocks the node's loop
    ''')
    ...; gate.reached.wait(10); ...; gate.opened.set()

The events are ``threading.Event`` so a handler may hold on one from the loop (wedging
it, on purpose) or from a thread (``await asyncio.to_thread(gate.opened.wait, 30)``), and
the test may wait for ``reached`` from a thread while the loop is wedged.
"""

from __future__ import annotations

import textwrap
import threading
from dataclasses import dataclass, field

__all__ = ["Gate", "GATES", "new_gate", "gate_policy"]


@dataclass(slots=True)
class Gate:
    """reached: the handler got there. opened: the test lets it go on."""

    reached: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)


GATES: dict[str, Gate] = {}


def new_gate(name: str) -> Gate:
    """A fresh gate under ``name`` (replacing an earlier test's)."""
    GATES[name] = Gate()
    return GATES[name]


def gate_policy(name: str, source: str) -> str:
    """Policy ``source`` (an init.py) with ``gate`` bound to the gate ``name``."""
    head = f"from tests.support.gates import GATES\n\ngate = GATES[{name!r}]\n\n"
    return head + textwrap.dedent(source)
