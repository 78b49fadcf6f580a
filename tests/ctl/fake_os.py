"""A stand-in for ``dbtkctl.service.oscmd.run``: records every command, answers from rules.

Tests install it with ``monkeypatch.setattr(oscmd, "run", fake)`` and then compare
``fake.calls`` with the exact argv lists the OS would have received.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dbtkctl.service.oscmd import Completed

Rule = Callable[[tuple[str, ...]], Completed | None]


@dataclass
class FakeOS:
    rules: list[Rule] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str]) -> Completed:
        command = tuple(argv)
        self.calls.append(command)
        for rule in reversed(self.rules):  # later rules override earlier ones
            answer = rule(command)
            if answer is not None:
                return answer
        return Completed(0)

    def answer(self, prefix: Sequence[str], result: Completed) -> None:
        """Commands starting with ``prefix`` get ``result``."""
        wanted = tuple(prefix)
        self.rules.append(lambda argv: result if argv[: len(wanted)] == wanted else None)

    def reset(self) -> None:
        self.calls.clear()
