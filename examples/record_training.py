"""Record cases from a PyTorch training loop, then replay them against darknet's reference.

A small two-head YOLO (the layout of yolov3-tiny, shrunk to 128x128 input and
3 classes) trains for a few steps on generated data: noise images with a few
painted boxes, targets as [N, 6] rows (image, class, x, y, w, h). The loss is
``parity.torch.DarknetYoloLoss``. A ``parity.record.Recorder`` hooked onto the
two head convolutions writes a format-v1 case per head every 2 steps. Then
``darknet-parity replay`` checks a candidate (by default this project's
PyTorch port; ``--candidate`` for your own loss) against the C reference on
exactly those training tensors.

    python examples/record_training.py                      # temp folder, 6 steps
    python examples/record_training.py --out recordings/ --steps 20 --every 5

Exit status: that of ``darknet-parity replay`` (0: they agree).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from parity.cli import main as darknet_parity
from parity.record import Recorder
from parity.torch import DarknetYoloLoss

CLASSES = 3
SIZE = 128
ANCHORS = "3,4, 7,8, 11,18, 25,25, 42,52, 106,98"   # yolov3-tiny's, scaled from 416 to 128

# The darknet cfg of the model below: layer by layer the same shapes, so
# parity.cfg.load_cfg derives the same grids (4x4 and 8x8).
CFG = f"""[net]
batch=8
subdivisions=1
width={SIZE}
height={SIZE}
channels=3

# 0..4: backbone, stride 2 each -> 64, 32, 16, 8, 4
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=64
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=64
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=128
size=3
stride=2
pad=1
activation=leaky

# 5, 6: first head, 4x4
[convolutional]
size=1
stride=1
pad=1
filters={3 * (5 + CLASSES)}
activation=linear

[yolo]
mask=3,4,5
anchors={ANCHORS}
classes={CLASSES}
num=6
ignore_thresh=.7
truth_thresh=1
iou_thresh=.213
iou_loss=ciou
iou_normalizer=0.07
scale_x_y=1.05
random=0

# 7..12: upsample, concatenate with layer 3, second head, 8x8
[route]
layers=-3

[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,3

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters={3 * (5 + CLASSES)}
activation=linear

[yolo]
mask=0,1,2
anchors={ANCHORS}
classes={CLASSES}
num=6
ignore_thresh=.7
truth_thresh=1
iou_thresh=.213
iou_loss=ciou
iou_normalizer=0.07
scale_x_y=1.05
random=0
"""


def conv(c_in: int, c_out: int, size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, size, stride, size // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1))


class TinyYolo(nn.Module):
    """The cfg above in PyTorch: two heads in darknet's layout [b, 3*(5+classes), h, w]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv(3, 16, stride=2), conv(16, 32, stride=2), conv(32, 64, stride=2))
        self.down4 = conv(64, 64, stride=2)                                  # layer 3: 8x8
        self.down5 = conv(64, 128, stride=2)                                 # layer 4: 4x4
        self.head1 = nn.Conv2d(128, 3 * (5 + CLASSES), 1)                    # layer 5 -> [yolo] 4x4
        self.lateral = conv(128, 32, size=1)                                 # layer 8
        self.up = nn.Upsample(scale_factor=2, mode="nearest")                # layer 9
        self.fuse = conv(32 + 64, 64)                                        # layer 11
        self.head2 = nn.Conv2d(64, 3 * (5 + CLASSES), 1)                     # layer 12 -> [yolo] 8x8

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.down4(self.stem(images))
        c4 = self.down5(c3)
        p2 = self.fuse(torch.cat([self.up(self.lateral(c4)), c3], 1))
        return [self.head1(c4), self.head2(p2)]


def make_batch(gen: torch.Generator, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with 1-4 painted boxes each; targets as [N, 6] rows (image, class, x, y, w, h)."""
    images = torch.rand(batch, 3, SIZE, SIZE, generator=gen) * 0.3
    rows = []
    for b in range(batch):
        for _ in range(int(torch.randint(1, 5, (1,), generator=gen))):
            cls = int(torch.randint(0, CLASSES, (1,), generator=gen))
            w, h = (0.08 + 0.5 * torch.rand(2, generator=gen)).tolist()
            x = 0.02 + (0.96 - 0.02) * float(torch.rand(1, generator=gen))
            y = 0.02 + (0.96 - 0.02) * float(torch.rand(1, generator=gen))
            x0, x1 = int(max(0.0, x - w / 2) * SIZE), int(min(1.0, x + w / 2) * SIZE)
            y0, y1 = int(max(0.0, y - h / 2) * SIZE), int(min(1.0, y + h / 2) * SIZE)
            images[b, cls, y0:y1, x0:x1] = 1.0
            rows.append([b, cls, x, y, w, h])
    return images, torch.tensor(rows, dtype=torch.float32)


def train(out: Path, steps: int, every: int, seed: int) -> Recorder:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TinyYolo()
    loss_fn = DarknetYoloLoss(CFG)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    with Recorder(heads=[model.head1, model.head2], cfg=CFG, out=out, every=every, max_bytes=50_000_000,
                  seed=seed, model=model) as recorder:
        for step in range(steps):
            images, targets = make_batch(gen)
            heads = model(images)
            loss = loss_fn(heads, targets)
            recorder.step(targets)                   # after the forward pass: writes on steps 0, every, ...
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            print(f"step {step}: darknet cost {loss.item():10.3f}")
    return recorder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for the recorded cases (default: a temporary folder)")
    parser.add_argument("--steps", type=int, default=6, help="training steps (default 6)")
    parser.add_argument("--every", type=int, default=2, help="record every N steps (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidate", default="parity",
                        help="candidate for the replay (default: this project's PyTorch port)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="darknet-parity-rec-") as tmp:
        out = Path(args.out or tmp)
        start = time.perf_counter()
        recorder = train(out, args.steps, args.every, args.seed)
        print(f"recorded {len(recorder.written)} cases ({recorder.bytes_written:,} bytes) into {out} "
              f"in {time.perf_counter() - start:.1f} s")
        print(f"$ darknet-parity replay {out} --candidate {args.candidate}")
        rc = darknet_parity(["replay", str(out), "--candidate", args.candidate])
        verdict = {0: "AGREE", 1: "MISMATCH"}.get(rc, f"ERROR (exit {rc})")
        print(f"verdict: {verdict}: candidate {args.candidate!r} vs darknet's C reference on "
              f"{len(recorder.written)} recorded training-step cases")
        return rc


if __name__ == "__main__":
    sys.exit(main())
