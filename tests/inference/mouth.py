"""A tiny classifier of the demo's mouth-open movement, trained in the test (about 15 CPU-s).

The demo's renderer (`maedfer.demo.render`) draws three committed portraits, two appearance
variants each, still (``neutral``) or opening the mouth (``mouth_open``); the clips are aligned
by the real MTCNN aligner to 64-px faces and a demo-width LGI-Former (width 64, 2x2x2 regions,
one block: the demo's has two) learns the two classes on them, minus each clip's mean frame,
with flips and random sign as the demo's recipe does. `mouth_clip` renders a clip of the fourth
portrait (never seen in training) whose only motion is the mouth: no sensor noise, no flicker.

Why one block: a second block's input tokens have been through the first block's
cross-attention, which hands every local token the representative tokens' summary of the whole
face; on a model this small the last block's Grad-CAM then spreads over the face and moves
with the training seed (measured: mouth shares 0.15-0.63 over two seeds, against 0.61-0.84 over
three seeds with one block).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maedfer.demo import render
from maedfer.inference.windows import window_batch
from maedfer.model import create_model
from maedfer.preprocess.faces import FaceAligner
from maedfer.training import checkpoint

CLASSES = ["neutral", "mouth_open"]
MODEL = dict(
    num_classes=2,
    img_size=64,
    depth=1,
    embed_dim=64,
    num_heads=2,
    region_size=(2, 2, 2),
    drop_path_rate=0.0,
)
FRAME = 96  # rendered frame side: the face is half of it
FRAMES = 16
# The mouth in the aligned 64-px crop: the template puts it 66 % down, between 38 % and 62 %
# across (maedfer.preprocess.align); with 16-px tokens that is token rows 2-3 (the jaw drops
# into row 3), columns 1-2: 4 of the 16 tokens of a frame.
MOUTH_ROWS, MOUTH_COLS = slice(2, 4), slice(1, 3)


def _subjects() -> list[render.Subject]:
    return [render.load_subject(p, FRAME) for p in render.default_portraits()]


def train_mouth_model(path: Path, epochs: int = 40) -> Path:
    """Train the model (seeded: the same weights every run) and save a run checkpoint."""
    torch.manual_seed(0)
    aligner = FaceAligner(64, "cpu")
    clips, labels = [], []
    for index, subject in enumerate(_subjects()[:3]):
        for actor in (1, 2):
            variant = render.actor_variant(subject, actor, frame_size=FRAME)
            for label, name in enumerate(CLASSES):
                for k in range(4):
                    rng = np.random.default_rng([index, actor, label, k])
                    frames = render.render_clip(
                        variant,
                        name,
                        render.draw_params(rng, FRAMES),
                        num_frames=FRAMES,
                        frame_size=FRAME,
                        rng=rng,
                    )
                    clips.append(aligner.align_frames(frames).frames)
                    labels.append(label)
    model = create_model("lgi_former_tiny", **MODEL)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    video, target = window_batch(clips, subtract_mean=True), torch.tensor(labels)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(clips), generator=generator)
        for start in range(0, len(clips), 8):
            batch = order[start : start + 8]
            x = video[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
            sign = torch.where(torch.rand(len(batch), generator=generator) < 0.5, -1.0, 1.0)
            loss = F.cross_entropy(model(x * sign[:, None, None, None, None]), target[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    config = dict(num_frames=FRAMES, size=64, stride=1, subtract_mean=True)
    state = dict(
        format=checkpoint.FORMAT,
        version=checkpoint.VERSION,
        model_name=model.model_name,
        model_config=checkpoint.plain(model.config),
        model=model.state_dict(),
        epoch=epochs,
        step=epochs * 6,
        config=config,
        classes=CLASSES,
    )
    checkpoint.save_checkpoint(path, state)
    return path


def mouth_clip(kind: str = "mouth_open", seed: int = 2) -> np.ndarray:
    """``(16, 96, 96, 3)`` uint8: the fourth portrait making ``kind``, nothing else moving."""
    subject = _subjects()[3]
    rng = np.random.default_rng([99, seed])
    params = dataclasses.replace(
        render.draw_params(rng, FRAMES), noise=0.0, flicker=np.ones(FRAMES)
    )
    return render.render_clip(subject, kind, params, num_frames=FRAMES, frame_size=FRAME, rng=rng)


def mouth_share(gradcam: np.ndarray) -> float:
    """The share of a ``(T', 4, 4)`` map's relevance on the mouth's tokens."""
    return float(gradcam[:, MOUTH_ROWS, MOUTH_COLS].sum() / gradcam.sum())
