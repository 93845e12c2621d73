"""The one internal form of SFT data: a conversation of turns, whatever file format it came from.

Roles are `user`, `assistant` and `tool` (a tool's result, an observation). A tool *call* is an
assistant turn whose content is the call. By default assistant turns are trained and the others
are not; a turn's `loss` flag overrides that (ChatGLM3's `loss: false`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("user", "assistant", "tool")


@dataclass
class Turn:
    role: Role
    content: str
    loss: bool | None = None  # None: trained if and only if role == "assistant"

    @property
    def trained(self) -> bool:
        return self.role == "assistant" if self.loss is None else self.loss


@dataclass
class Conversation:
    turns: list[Turn]
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"department": "心血管科"}

    @property
    def first_user_turn(self) -> str:
        """The first user turn (after the system prompt); dedup's `first_turn` key."""
        return next((t.content for t in self.turns if t.role == "user"), "")

    def messages(self) -> list[dict[str, str]]:
        """OpenAI/HF-style messages for a chat template: system first, then the turns."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": t.role, "content": t.content} for t in self.turns]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Conversation:
        data = json.loads(text)
        return cls(
            turns=[Turn(**t) for t in data["turns"]],
            system=data.get("system"),
            tools=data.get("tools"),
            meta=data.get("meta") or {},
        )
