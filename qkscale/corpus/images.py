"""Image corpora for vision transformers: a folder of PNG/JPEG files (recursive) or ``builtin-images``.

A document is one image, named by its path relative to the corpus folder. Every file of the
folder is checked once, when the corpus is opened: files that are not PNG/JPEG or that do not
decode are skipped and listed (:attr:`ImageCorpus.skipped`), so that extraction never meets a
bad file halfway through a shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkscale.corpus.index import Position, Sharded
from qkscale.errors import CorpusError

BUILTIN_IMAGES = "builtin-images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The photographs bundled inside the scikit-image wheel (no download) and scikit-learn's two samples.
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


@dataclass(frozen=True)
class Image:
    """One document of an image corpus: its display name and the file it is read from."""

    name: str
    path: Path


@dataclass
class ImageCorpus(Sharded[Image]):
    """An ordered list of readable images (and the files that were skipped as unreadable).

    Each image is one source of the shard index: a shard's cursor is the index of its first image.
    """

    spec: str
    images: list[Image]
    skipped: list[str] = field(default_factory=list)
    modality = "image"

    def _sources(self) -> list[Path | None]:
        return [image.path for image in self.images]

    def _read_source(self, source: int, start: Position) -> Iterator[tuple[Position, Image]]:
        yield start, self.images[source]

    def count(self, limit: int | None = None) -> int:
        return len(self.images[:limit])

    def describe(self) -> dict[str, Any]:
        """Identity for the manifest: spec, image count, fingerprint of names, sizes and times."""
        digest = hashlib.sha256()
        for image in self.images:
            stat = image.path.stat()
            digest.update(f"{image.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {
            "spec": self.spec,
            "files": len(self.images),
            "skipped": len(self.skipped),
            "fingerprint": digest.hexdigest()[:16],
        }

    def skipped_message(self, shown: int = 10) -> str:
        """One line naming the skipped files (the first ``shown`` of them)."""
        names = ", ".join(self.skipped[:shown])
        more = f" and {len(self.skipped) - shown} more" if len(self.skipped) > shown else ""
        return f"skipped {len(self.skipped)} unreadable or non-image file(s) in {self.spec}: {names}{more}"


def load_rgb(path: Path, draft: tuple[int, int] | None = None):
    """The image at ``path`` as an RGB ``PIL.Image`` (fully decoded); ``draft`` lets JPEG decode smaller."""
    from PIL import Image as PILImage

    with PILImage.open(path) as image:
        if draft is not None:
            image.draft("RGB", draft)
        image.load()
        return image.convert("RGB")


def is_readable_image(path: Path) -> bool:
    """True if ``path`` is a PNG/JPEG file that decodes completely (JPEGs checked at reduced scale)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    try:
        load_rgb(path, draft=(64, 64))
    except Exception:  # PIL raises many types for truncated or foreign data
        return False
    return True


def open_image_corpus(spec: str | Path) -> ImageCorpus:
    """``builtin-images`` or a folder of PNG/JPEG images searched recursively (hidden paths and
    qkscale stores inside it are left out)."""
    if str(spec) == BUILTIN_IMAGES:
        return ImageCorpus(BUILTIN_IMAGES, builtin_images())
    path = Path(spec).expanduser()
    if not path.exists():
        raise CorpusError(f"image corpus {spec} does not exist (give a folder of images or {BUILTIN_IMAGES})")
    files = _folder_files(path) if path.is_dir() else [path]
    candidates = [(str(p.relative_to(path)) if path.is_dir() else p.name, p) for p in files]
    images, skipped = [], []
    for name, file in candidates:
        (images if is_readable_image(file) else skipped).append(Image(name, file.resolve()))
    if not images:
        raise CorpusError(f"image corpus {spec} holds no readable {'/'.join(IMAGE_SUFFIXES)} image")
    return ImageCorpus(str(path.resolve()), images, [image.name for image in skipped])


def _folder_files(folder: Path) -> list[Path]:
    from qkscale.store import read_manifest

    stores = [m.parent for m in folder.rglob("manifest.json") if read_manifest(m.parent) is not None]
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not any(store in p.parents for store in stores)
    )


def builtin_images() -> list[Image]:
    """The sample photographs shipped inside scikit-image and scikit-learn (offline)."""
    try:
        import skimage
    except ImportError:
        raise CorpusError(
            f"{BUILTIN_IMAGES} needs scikit-image (pip install 'qkscale[vision]') or give a folder of images"
        ) from None
    import sklearn

    skimage_data = Path(skimage.__file__).parent / "data"
    sklearn_data = Path(sklearn.__file__).parent / "datasets" / "images"
    images = [Image(f"skimage/{n}", skimage_data / n) for n in _SKIMAGE_PHOTOS]
    images += [Image(f"sklearn/{n}", sklearn_data / n) for n in _SKLEARN_PHOTOS]
    missing = [image.name for image in images if not image.path.is_file()]
    if missing:
        raise CorpusError(f"{BUILTIN_IMAGES}: the installed packages lack {', '.join(missing)}")
    return images
