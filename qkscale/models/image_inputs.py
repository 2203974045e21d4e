"""Images to vision-transformer inputs: the model's own image processor, patch tokens, thumbnails.

A ViT-style model sees its prefix tokens (CLS, then DeiT's distillation token or DINOv2's
registers) followed by the patches in row-major order; each becomes a token row with the image's
name and the patch's ``patch_row``/``patch_col`` (-1 for prefix tokens). Each document record
keeps a JPEG thumbnail of the image *as the model saw it* (resized and cropped by the processor,
normalisation undone), so that the patch grid lies exactly over it in the image view.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qkscale.corpus.images import Image, load_rgb
from qkscale.errors import ModelError
from qkscale.models.inputs import Batch
from qkscale.store import layout

THUMBNAIL_MAX_SIDE = 256
THUMBNAIL_QUALITY = 90
# The default preprocessing when the model directory has no preprocessor_config.json: resize to
# the config's image_size (bilinear), scale to [0, 1], normalise with mean = std = 0.5 per channel
# (transformers' ViTImageProcessor defaults, as google/vit-base-patch16-224 uses).
DEFAULT_IMAGE_MEAN = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_STD = (0.5, 0.5, 0.5)


def default_image_processor(config):
    """The documented default processor (see :data:`DEFAULT_IMAGE_MEAN`) for ``config.image_size``."""
    from transformers import ViTImageProcessor

    size = _pair(config.image_size)
    return ViTImageProcessor(
        size={"height": size[0], "width": size[1]}, image_mean=DEFAULT_IMAGE_MEAN, image_std=DEFAULT_IMAGE_STD
    )


def load_image_processor(path: Path, config):
    """The image processor saved in the model directory ``path``, else :func:`default_image_processor`."""
    if not (path / "preprocessor_config.json").is_file():
        return default_image_processor(config)
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path)


def prefix_tokens(config) -> list[str]:
    """Names of the tokens before the patches: CLS, DeiT's distillation token, DINOv2's registers."""
    names = ["[CLS]"]
    if config.model_type == "deit":
        names.append("[DIST]")
    names += [f"[REG{i}]" for i in range(getattr(config, "num_register_tokens", 0) or 0)]
    return names


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class ImageInputs:
    """Batches of preprocessed images, every image giving the same prefix + patch-grid tokens."""

    modality = "image"
    token_schema = layout.IMAGE_TOKEN_SCHEMA

    def __init__(self, processor, config, dtype: torch.dtype = torch.float32, from_model_dir: bool = True):
        from PIL import Image as PILImage

        self.processor = processor
        self.dtype = dtype
        self.from_model_dir = from_model_dir
        self.prefix = prefix_tokens(config)
        self.patch = _pair(config.patch_size)
        blank = PILImage.new("RGB", (64, 64))
        self.height, self.width = self._pixels([blank]).shape[-2:]
        self.grid = (self.height // self.patch[0], self.width // self.patch[1])
        self.n_tokens = len(self.prefix) + self.grid[0] * self.grid[1]
        self._mean, self._std = self._normalisation()

    def describe(self) -> dict[str, Any]:
        return {
            "processor": type(self.processor).__name__,
            "from_model_dir": self.from_model_dir,
            "size": [self.height, self.width],
            "patch_size": list(self.patch),
            "grid": list(self.grid),
            "prefix_tokens": self.prefix,
        }

    def count_tokens(self, documents: list[Image]) -> list[int]:
        return [self.n_tokens] * len(documents)

    def _pixels(self, images: list) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        if pixels.ndim != 4:
            raise ModelError(f"the image processor gives pixel values of shape {tuple(pixels.shape)}, not 4-D")
        return pixels

    def _normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std that the processor applied (0 and 1 where it does not normalise)."""
        normalises = getattr(self.processor, "do_normalize", False)
        mean = getattr(self.processor, "image_mean", None) if normalises else None
        std = getattr(self.processor, "image_std", None) if normalises else None
        mean = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0)).view(3, 1, 1)
        std = torch.tensor(std if std is not None else (1.0, 1.0, 1.0)).view(3, 1, 1)
        return mean, std

    def batches(self, docs: list[tuple[int, Image]], batch_size: int, bucket: bool) -> Iterator[Batch]:
        """Batches in document order (every image has the same length: ``bucket`` changes nothing)."""
        for start in range(0, len(docs), batch_size):
            chunk = docs[start : start + batch_size]
            originals = [load_rgb(image.path, draft=(2 * self.width, 2 * self.height)) for _, image in chunk]
            pixels = self._pixels(originals)
            if tuple(pixels.shape[-2:]) != (self.height, self.width):
                raise ModelError(
                    f"the image processor gives {tuple(pixels.shape[-2:])} pixels for {chunk[0][1].name}, "
                    f"not {(self.height, self.width)}: it must resize every image to one size"
                )
            real = torch.ones((len(chunk), self.n_tokens), dtype=torch.bool)
            records = partial(self._records, chunk, [(o.width, o.height) for o in originals], pixels)
            rows = partial(self._token_rows, chunk)
            yield Batch({"pixel_values": pixels.to(self.dtype)}, real, records, rows)

    def _records(
        self, chunk: list[tuple[int, Image]], sizes: list[tuple[int, int]], pixels: torch.Tensor
    ) -> list[dict[str, Any]]:
        return [
            {
                "doc": doc,
                "text": image.name,
                "n_tokens": self.n_tokens,
                "truncated": False,
                "width": width,
                "height": height,
                "thumbnail": self.thumbnail(one),
            }
            for (doc, image), (width, height), one in zip(chunk, sizes, pixels, strict=True)
        ]

    def thumbnail(self, pixels: torch.Tensor) -> bytes:
        """JPEG bytes of one ``[3, H, W]`` processed image with its normalisation undone."""
        from PIL import Image as PILImage

        values = (pixels.float() * self._std + self._mean).clamp(0, 1)
        array = (values.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        picture = PILImage.fromarray(array)
        picture.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
        return buffer.getvalue()

    def _token_rows(self, chunk: list[tuple[int, Image]]) -> dict[str, Any]:
        cols = self.grid[1]
        n_prefix, n = len(self.prefix), self.n_tokens
        patch = np.arange(n - n_prefix)
        patch_row = np.concatenate([np.full(n_prefix, -1), patch // cols]).astype(np.int32)
        patch_col = np.concatenate([np.full(n_prefix, -1), patch % cols]).astype(np.int32)
        patches = zip(patch_row[n_prefix:], patch_col[n_prefix:], strict=True)
        names = self.prefix + [f"patch {r},{c}" for r, c in patches]
        position = np.arange(n, dtype=np.int32)
        k = len(chunk)
        return {
            "doc": np.repeat(np.asarray([doc for doc, _ in chunk], dtype=np.int64), n),
            "position": np.tile(position, k),
            "token": names * k,
            "token_id": np.tile(np.concatenate([np.full(n_prefix, -1), patch]).astype(np.int32), k),
            "is_special": np.tile(position < n_prefix, k),
            "doc_length": np.full(n * k, n, dtype=np.int32),
            "rel_position": np.tile((position / max(n - 1, 1)).astype(np.float32), k),
            "image": [image.name for _, image in chunk for _ in range(n)],
            "patch_row": np.tile(patch_row, k),
            "patch_col": np.tile(patch_col, k),
        }
