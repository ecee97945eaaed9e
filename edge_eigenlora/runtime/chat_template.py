"""The bundle's chat template (Jinja, as transformers stores it), rendered without transformers.

A bundle is untrusted input, so the template runs in Jinja's immutable sandbox: it can format the messages
and nothing else (no attribute access to Python internals, no file or module access).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["ChatTemplate"]


class ChatTemplate:
    """render(prompt) -> the text the model was tuned on: a user turn, then the assistant's opening."""

    def __init__(self, source: str, where: str, special: dict[str, str] | None = None) -> None:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise EdgeEigenLoraError(f"{where}: the chat template refused the messages: {message}")

        # the settings transformers renders with, so the text (and the ids) match the workstation
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = raise_exception
        self.where = where
        self.special = dict(special or {})
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise EdgeEigenLoraError(
                f"{where}: the chat template is not valid Jinja ({exc}); re-export the bundle."
            ) from exc

    @classmethod
    def from_file(cls, path: Path, special: dict[str, str] | None = None) -> ChatTemplate:
        return cls(path.read_text(encoding="utf-8"), str(path), special)

    def render(self, prompt: str, system: str | None = None) -> str:
        messages: list[dict[str, Any]] = [] if system is None else [{"role": "system", "content": system}]
        messages.append({"role": "user", "content": prompt})
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=messages, add_generation_prompt=True, **self.special)
        except TemplateError as exc:
            raise EdgeEigenLoraError(f"{self.where}: the chat template failed ({exc}).") from exc
