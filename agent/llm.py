"""LLM decomposition through any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama,
llama.cpp's server).

Configuration: ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and the model from ``--llm-model`` or
``SLOWFAST_LLM_MODEL``. The prompt lists the task's allowed subgoal texts; the reply must
be JSON ``{"subgoals": [...]}``, parsed with pydantic and then checked against the
templates. A malformed or invalid reply is retried (``attempts`` in all), then the rule
decomposer is used with a warning. The API key is never logged or written anywhere.
"""

from __future__ import annotations

import logging
import os
import re

from pydantic import BaseModel, ValidationError

from agent.decompose import DecompositionError, allowed_subgoals, rules, validate
from tasks.base import Subgoal

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You split a robot or game agent's long-horizon goal into subgoals. Use only subgoal texts from the "
    "allowed list, copied exactly, in the order they must happen. Reply with JSON only: "
    '{"subgoals": ["...", "..."]}')


class Decomposition(BaseModel):
    subgoals: list[str]


def _prompt(task: str, goal: str, context: dict) -> str:
    allowed = "\n".join(f"- {s.text}" for s in allowed_subgoals(task, context))
    return f"Task: {task}\nGoal: {goal}\nAllowed subgoals:\n{allowed}\nJSON reply:"


def parse_reply(task: str, content: str, context: dict) -> list[Subgoal]:
    """Reply text -> validated subgoals; tolerates a fenced code block around the JSON."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", content, re.DOTALL)
    text = fenced.group(1) if fenced else content
    try:
        reply = Decomposition.model_validate_json(text.strip())
    except ValidationError as error:
        raise DecompositionError(f"reply is not JSON of the form {{\"subgoals\": [...]}}: "
                                 f"{error.errors()[0]['msg']}") from None
    return validate(task, reply.subgoals, context)


class OpenAIDecomposer:
    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 30.0, attempts: int = 3):
        import openai

        self.model = model or os.environ.get("SLOWFAST_LLM_MODEL")
        if not self.model:
            raise ValueError("--llm openai needs a model: pass --llm-model NAME or set SLOWFAST_LLM_MODEL")
        self.attempts = attempts
        self._errors = (openai.APIError, openai.APIConnectionError, openai.APITimeoutError)
        self.client = openai.OpenAI(base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
                                    api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
                                    timeout=timeout, max_retries=0)

    def __call__(self, task: str, goal: str, context: dict) -> tuple[list[Subgoal], dict]:
        """Subgoals and a report: which source was used and what went wrong on the way."""
        problems = []
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": _prompt(task, goal, context)}]
        for attempt in range(self.attempts):
            try:
                response = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0)
                content = response.choices[0].message.content or ""
                return parse_reply(task, content, context), {"source": "openai", "attempts": attempt + 1,
                                                             "problems": problems}
            except DecompositionError as error:
                problems.append(str(error))
                messages = messages[:2] + [{"role": "assistant", "content": content},
                                           {"role": "user", "content": f"That reply was invalid ({error}). "
                                                                       "Reply with the JSON only."}]
            except self._errors as error:
                problems.append(f"{type(error).__name__}: {error}")
        log.warning("LLM decomposition failed after %d attempts (%s); using the rule decomposer",
                    self.attempts, problems[-1] if problems else "no reply")
        return rules(task, goal, context), {"source": "rules-fallback", "attempts": self.attempts,
                                            "problems": problems}
