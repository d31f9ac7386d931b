"""What every task provides: goal text, canonical subgoals, the subgoal kinds of its
return phase (``RETURN_KINDS``), and a metric.

A task knows nothing about simulators; backends in ``envs`` read the task spec to
build scenes, and the agent reads it to constrain decomposition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Subgoal:
    """One step of a long-horizon goal, as the world model reads it (``text``).

    ``kind`` and ``params`` say what the scripted expert and the decomposers must do,
    so text is never parsed back into meaning.
    """

    text: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "kind": self.kind, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Subgoal":
        return cls(text=data["text"], kind=data["kind"], params=dict(data.get("params", {})))


class UnknownTaskError(ValueError):
    pass


# Frames the world model generates per chunk. Collected subgoals are padded to a
# multiple of it, so every chunk belongs to exactly one subgoal.
CHUNK_FRAMES = 8
