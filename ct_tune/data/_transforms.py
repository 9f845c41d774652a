"""Pixel-space transforms chosen by the model's InputSpec, not by the dataset.

Every sample leaves as a float32 tensor in [0, 1] shaped (channels, size, size). Normalisation is not done
here: it belongs to the model (``InputSpec.normalize``), so attacks and other pixel-space tools see pixels.

8-bit images are resized, cropped and channel-matched as 8-bit images and converted to float last, as
torchvision's own evaluation transforms (``ImageClassification``: resize the PIL image, then convert) and
PIL do: the pretrained weights were scored on such pixels, and every value is exactly k/255, so the
machine's cache stores them in 8 bits (4x smaller). Until 2026-12-04 they were converted first and resized
as floats. Measured 2026-12-04 on 200 val photos of 260-340 x 300-380 pixels brought to 224x224 (resize
256, centre crop): every pixel moved, by 0.30/255 on average and at most 1.0/255; a probe on torchvision
resnet18 features scored 0.695 both ways at ReLU (2 of 200 samples flipped, in both directions) and
0.715 before, 0.720 after at beta 0.8 (1 sample): within noise.
Float sources (digits, arrays) are resized as floats, as before.

- Fixed-size datasets (digits, MNIST, CIFAR, SVHN, STL-10) are resized whole to the model's size; training
  augmentation (opt-in) is a padded random crop, plus a horizontal flip where the classes allow it.
- Photo datasets of varying size are resized by the short side to ``size / crop_pct`` and centre-cropped
  (torchvision's evaluation recipe); training augmentation is a random resized crop and a flip.
- Channels follow the model: grayscale is repeated to 3 channels, RGB is converted to luminance for a
  1-channel model, an alpha channel is dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

__all__ = ["MatchChannels", "build_transform"]

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class MatchChannels(nn.Module):
    """Bring a (..., C, H, W) image to ``channels`` channels (1 or 3)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, image: Tensor) -> Tensor:
        have = image.shape[-3]
        if have == 4 or have == 2:  # RGBA / LA: drop alpha
            image = image[..., : have - 1, :, :]
            have -= 1
        if have == self.channels:
            return image
        if have == 1 and self.channels == 3:
            return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).contiguous()
        if have == 3 and self.channels == 1:
            return v2.functional.rgb_to_grayscale(image, num_output_channels=1)
        raise ValueError(f"cannot turn a {have}-channel image into {self.channels} channels")

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def build_transform(
    *,
    native_size: int | None,
    size: int,
    channels: int,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    train: bool = False,
    augment: bool = False,
    flip: bool = True,
) -> v2.Compose:
    """The per-sample transform: PIL image or uint8/float tensor in, float32 pixels in [0, 1] out."""
    mode = _INTERPOLATION[interpolation]
    steps: list[nn.Module] = [v2.ToImage()]
    random = train and augment
    if native_size is None:  # photos of varying size
        if random:
            steps.append(v2.RandomResizedCrop(size, interpolation=mode, antialias=True))
        else:
            steps += [v2.Resize(max(size, round(size / crop_pct)), interpolation=mode, antialias=True)]
            steps.append(v2.CenterCrop(size))
    else:
        if native_size != size:
            steps.append(v2.Resize((size, size), interpolation=mode, antialias=True))
        if random:
            steps.append(v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"))
    if random and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [MatchChannels(channels), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]
    return v2.Compose(steps)
