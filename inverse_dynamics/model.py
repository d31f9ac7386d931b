"""Inverse dynamics (paper Sec. 3.4): two consecutive frames -> the action between them.

A small CNN over the channel-stacked pair. The action spec comes from the task:
``continuous`` dimensions are regressed in units normalised by dataset statistics
(kept in the checkpoint), ``discrete`` heads are classifiers. For ``return_cubes`` the
action is (dx, dy, dz) continuous + gripper {open, close}; for ``retrace`` one of the
movement actions.

The robot's continuous head predicts either the commanded delta itself (``delta``) or the
end effector's position in frame t + 1 (``next_position``, the default). Executed one after
another, predicted deltas integrate their small biases into the arm's position (measured:
7.8 cm of z drift over a 256-frame replay, success 0/10); a predicted position is turned
into a delta against the arm's *measured* position at execution time
(``to_env_action``), so errors stay those of one frame.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "idm.json"
WEIGHTS_NAME = "idm.safetensors"


CONTINUOUS_TARGETS = ("delta", "next_position")


class IDMCheckpointError(ValueError):
    pass


@dataclass
class IDMConfig:
    task: str
    image_size: int = 64
    continuous_dim: int = 0
    discrete_classes: int = 0
    width: int = 32
    action_mean: list[float] = field(default_factory=list)
    action_std: list[float] = field(default_factory=list)
    continuous_target: str = "delta"
    max_step: float = 1.0

    def __post_init__(self) -> None:
        if self.continuous_target not in CONTINUOUS_TARGETS:
            raise IDMCheckpointError(f"continuous_target must be one of {CONTINUOUS_TARGETS}, "
                                     f"got {self.continuous_target!r}")


def action_spec(task: str) -> tuple[int, int]:
    """(continuous dims, discrete classes) of a task's env action."""
    if task == "return_cubes":
        return 3, 2
    if task == "retrace":
        from tasks import retrace

        return 0, len(retrace.ACTIONS)
    raise IDMCheckpointError(f"no inverse-dynamics action spec for task {task!r}")


def split_actions(task: str, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Env actions -> (continuous targets, class targets)."""
    actions = np.asarray(actions)
    if task == "return_cubes":
        return actions[:, :3].astype(np.float32), (actions[:, 3] > 0).astype(np.int64)
    return np.zeros((len(actions), 0), np.float32), actions.reshape(-1).astype(np.int64)


class InverseDynamicsModel(nn.Module):
    def __init__(self, config: IDMConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.encoder = nn.Sequential(
            nn.Conv2d(6, w, 4, 2, 1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.GroupNorm(8, 2 * w), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.GroupNorm(8, 4 * w), nn.GELU(),
            nn.Conv2d(4 * w, 4 * w, 4, 2, 1), nn.GroupNorm(8, 4 * w), nn.GELU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16 * w, 256), nn.GELU(),
        )
        self.continuous_head = nn.Linear(256, config.continuous_dim) if config.continuous_dim else None
        self.discrete_head = nn.Linear(256, config.discrete_classes) if config.discrete_classes else None
        mean = torch.tensor(config.action_mean or [0.0] * config.continuous_dim)
        std = torch.tensor(config.action_std or [1.0] * config.continuous_dim)
        self.register_buffer("action_mean", mean, persistent=False)
        self.register_buffer("action_std", std, persistent=False)

    @staticmethod
    def to_input(frame_a, frame_b) -> torch.Tensor:
        """(B, H, W, 3) uint8 pairs -> (B, 6, H, W): frame a in [-1, 1] and the change b - a.

        Giving the change explicitly spares the network from discovering it; without it,
        training sat on the majority class for hundreds of steps in one of two runs.
        """
        a = torch.as_tensor(np.asarray(frame_a)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        b = torch.as_tensor(np.asarray(frame_b)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return torch.cat([a, b - a], dim=1)

    def forward(self, pair: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        h = self.encoder(pair)
        continuous = self.continuous_head(h) if self.continuous_head is not None else None
        logits = self.discrete_head(h) if self.discrete_head is not None else None
        return continuous, logits

    def normalise(self, continuous: torch.Tensor) -> torch.Tensor:
        return (continuous - self.action_mean) / self.action_std

    def denormalise(self, continuous: torch.Tensor) -> torch.Tensor:
        return continuous * self.action_std + self.action_mean

    @torch.no_grad()
    def predict(self, frames_a, frames_b) -> list:
        """Predictions for a batch of frame pairs; ``to_env_action`` makes each an env action."""
        was = self.training
        self.eval()
        continuous, logits = self(self.to_input(frames_a, frames_b))
        self.train(was)
        if self.config.task == "return_cubes":
            values = self.denormalise(continuous)
            if self.config.continuous_target == "delta":
                values = values.clamp(-1, 1)
            grip = logits.argmax(-1).numpy() * 2.0 - 1.0
            return [np.array([*v, g], dtype=np.float32) for v, g in zip(values.numpy(), grip)]
        return [int(a) for a in logits.argmax(-1)]

    def to_env_action(self, prediction, observation: dict):
        """The env action for one prediction, given the observation it will be executed from."""
        if self.config.continuous_target == "delta" or self.config.task != "return_cubes":
            return prediction
        delta = (prediction[:3] - np.asarray(observation["ee_pos"], dtype=np.float32)) / self.config.max_step
        return np.array([*np.clip(delta, -1.0, 1.0), prediction[3]], dtype=np.float32)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        save_file({k: v.detach().half().contiguous() for k, v in self.state_dict().items()}, path / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "InverseDynamicsModel":
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise IDMCheckpointError(f"no inverse-dynamics model at {path} (missing {CONFIG_NAME}); train one "
                                     "with `slowfast train-idm --task TASK --data DIR --out DIR`")
        try:
            model = cls(IDMConfig(**json.loads((path / CONFIG_NAME).read_text())))
            state = {k: v.float() for k, v in load_file(path / WEIGHTS_NAME).items()}
            model.load_state_dict(state)
        except Exception as error:  # corrupt JSON, safetensors or shapes: one clear message
            raise IDMCheckpointError(f"inverse-dynamics checkpoint at {path} is unreadable: {error}; "
                                     "retrain it or restore the folder") from None
        return model.eval()
