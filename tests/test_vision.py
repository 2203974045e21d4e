"""Vision transformers (ViT, DeiT, DINOv2, DINOv2 with registers) over image folders and builtin-images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, PATCH, save_tiny_vision
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

import qkscale
from qkscale.errors import CorpusError, QKScaleWarning
from qkscale.extraction import LoadedModel, plan_extraction
from qkscale.models.image_inputs import DEFAULT_IMAGE_MEAN

# model type -> (prefix tokens, image processor saved beside the model)
VISION = {
    "vit": (["[CLS]"], True),
    "deit": (["[CLS]", "[DIST]"], False),
    "dinov2": (["[CLS]"], True),
    "dinov2_with_registers": (["[CLS]", "[REG0]", "[REG1]"], False),
}


def _picture(height: int, width: int, seed: int) -> np.ndarray:
    """A structured RGB picture: gradients, a bright block and noise (peaked, varied attention)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    picture = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 180
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    picture[top : top + height // 3, left : left + width // 3] = rng.integers(150, 255, 3)
    picture += rng.normal(0, 20, picture.shape)
    return picture.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Five images (PNG, JPEG, greyscale, RGBA, nested) plus a corrupt JPEG, a text file and a hidden file."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(_picture(48, 64, 0)).save(folder / "a.png")
    Image.fromarray(_picture(90, 70, 1)).save(folder / "b.jpg", quality=95)
    Image.fromarray(_picture(40, 40, 2)).convert("L").save(folder / "nested" / "grey.png")
    Image.fromarray(_picture(64, 32, 3)).convert("RGBA").save(folder / "nested" / "deeper" / "alpha.PNG")
    Image.fromarray(_picture(50, 50, 4)).save(folder / "nested" / "c.jpeg")
    whole = io.BytesIO()
    Image.fromarray(_picture(64, 64, 5)).save(whole, format="JPEG")
    (folder / "corrupt.jpg").write_bytes(whole.getvalue()[:300])
    (folder / "notes.txt").write_text("not an image\n")
    Image.fromarray(_picture(16, 16, 6)).save(folder / ".hidden.png")
    return folder


def _plan(source: Path, folder: Path, out: Path):
    """The extraction plan over the image folder (which warns about its two bad files)."""
    with pytest.warns(QKScaleWarning, match="skipped 2"):
        return plan_extraction(str(source), folder, out)


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision-models")
    return {name: save_tiny_vision(root / name, name, processor) for name, (_, processor) in VISION.items()}


@pytest.fixture(scope="module")
def image_stores(tmp_path_factory, vision_models, image_folder) -> dict:
    root = tmp_path_factory.mktemp("image-stores")
    stores = {}
    for name, model in vision_models.items():
        skipped = r"skipped 2 unreadable or non-image file\(s\).*: corrupt.jpg, notes.txt"
        with pytest.warns(QKScaleWarning, match=skipped):
            stores[name] = qkscale.extract(
                str(model), image_folder, root / name, batch_size=2, docs_per_shard=3, progress=False
            )
    return stores


@pytest.mark.parametrize("family", list(VISION))
def test_attention_from_image_store_equals_model_attention(family, image_stores, vision_models, image_folder):
    store, source = image_stores[family], str(vision_models[family])
    plan = _plan(source, image_folder, store.path / "unused")
    inputs = LoadedModel.load(plan).inputs
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    docs = list(enumerate(plan.documents()))
    worst = uniform_gap = 0.0
    for batch in inputs.batches(docs, batch_size=8, bucket=False):
        with torch.no_grad():
            attentions = model(**batch.inputs, output_attentions=True).attentions
        for index, record in enumerate(batch.documents()):
            for layer in store.layers:
                for head in range(store.n_heads):
                    ours = store.attention(record["doc"], layer, head)
                    theirs = attentions[layer][index, head].float().numpy()
                    assert ours.shape == theirs.shape == (inputs.n_tokens, inputs.n_tokens)
                    worst = max(worst, float(np.abs(ours - theirs).max()))
                    uniform_gap = max(uniform_gap, float(np.abs(ours - 1 / len(ours)).max()))
    assert worst < 2e-3, f"{family}: max |attention difference| {worst:.2e}"
    assert uniform_gap > 50 * 2e-3, f"{family}: attention too flat for the oracle to discriminate"


@pytest.mark.parametrize("family", list(VISION))
def test_image_tokens_are_prefix_then_patches(family, image_stores):
    store = image_stores[family]
    prefix, grid = VISION[family][0], IMAGE_SIZE // PATCH
    tokens = store.tokens
    names = ["a.png", "b.jpg", "nested/c.jpeg", "nested/deeper/alpha.PNG", "nested/grey.png"]
    assert store.modality == "image"
    assert store.documents["text"].tolist() == names  # sorted paths; corrupt, text and hidden files left out
    assert len(tokens) == len(names) * (len(prefix) + grid * grid) == store.n_tokens
    first = tokens[tokens["doc"] == 0]
    assert first["token"].tolist()[: len(prefix)] == prefix
    assert first["is_special"].sum() == len(prefix)
    patches = first.iloc[len(prefix) :]
    assert patches["patch_row"].tolist() == [r for r in range(grid) for _ in range(grid)]
    assert patches["patch_col"].tolist() == list(range(grid)) * grid
    assert (first.iloc[: len(prefix)][["patch_row", "patch_col"]] == -1).all().all()
    assert set(tokens["image"]) == set(names)
    assert store.preprocessing["grid"] == [grid, grid]
    assert store.preprocessing["prefix_tokens"] == prefix
    assert store.preprocessing["from_model_dir"] == VISION[family][1]


def test_pixels_follow_the_saved_processor_or_the_documented_default(vision_models, image_folder):
    """PNG pixels equal the processor's own output on the decoded image; no processor gives the default."""
    for family in ("vit", "deit"):
        source = str(vision_models[family])
        plan = _plan(source, image_folder, image_folder.parent / "unused")
        inputs = LoadedModel.load(plan).inputs
        batch = next(inputs.batches(list(enumerate(plan.documents()))[:1], 1, False))
        if VISION[family][1]:
            processor = AutoImageProcessor.from_pretrained(source)
        else:
            from transformers import ViTImageProcessor

            processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
            assert tuple(processor.image_mean) == DEFAULT_IMAGE_MEAN
        expected = processor(images=[Image.open(image_folder / "a.png").convert("RGB")], return_tensors="pt")
        assert torch.equal(batch.inputs["pixel_values"], expected["pixel_values"])


def test_thumbnail_is_the_image_as_the_model_saw_it(image_stores, image_folder):
    store = image_stores["deit"]  # default processor: resize to 32x32, mean = std = 0.5
    thumbnail = Image.open(io.BytesIO(store.thumbnail(0)))
    assert thumbnail.format == "JPEG" and thumbnail.size == (IMAGE_SIZE, IMAGE_SIZE)
    original = Image.open(image_folder / "a.png").convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    difference = np.abs(np.asarray(thumbnail, float) - np.asarray(original, float)).mean()
    assert difference < 6, f"thumbnail differs from the resized image by {difference:.1f} levels on average"
    assert store.documents.loc[1, ["width", "height"]].tolist() == [70, 90]
    assert "thumbnail" not in store.documents.columns


def test_builtin_images(tmp_path, vision_models, run_cli):
    code, out, err = run_cli("extract", "--model", vision_models["vit"], "--out", tmp_path / "s", "--limit-docs", "3")
    assert code == 0, err
    assert "3 images of 3 ([CLS] + 4x4 patches)" in out
    store = qkscale.open_store(tmp_path / "s")
    assert store.documents["text"].tolist() == ["skimage/astronaut.png", "skimage/brick.png", "skimage/camera.png"]
    assert Image.open(io.BytesIO(store.thumbnail(2))).size == (IMAGE_SIZE, IMAGE_SIZE)


def test_skipped_files_are_listed_in_one_warning_line(tmp_path, vision_models, image_folder, run_cli):
    code, _, err = run_cli("extract", "--model", vision_models["dinov2"], "--corpus", image_folder, "--out", tmp_path)
    assert code == 0
    assert err.splitlines()[0] == (
        f"qkscale: warning: skipped 2 unreadable or non-image file(s) in {image_folder}: corrupt.jpg, notes.txt"
    )


def test_folder_without_images_is_an_error(tmp_path, vision_models, image_folder, run_cli):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("words\n")
    (tmp_path / "docs" / "corrupt.jpg").write_bytes((image_folder / "corrupt.jpg").read_bytes())
    model, docs = vision_models["vit"], tmp_path / "docs"
    code, out, err = run_cli("extract", "--model", model, "--corpus", docs, "--out", tmp_path / "s")
    assert code == 2 and out == ""
    assert err == f"qkscale: error: image corpus {tmp_path / 'docs'} holds no readable .png/.jpg/.jpeg image\n"
    assert not (tmp_path / "s").exists()


def test_corpus_and_model_kinds_must_agree(tmp_path, vision_models):
    with pytest.raises(CorpusError, match="'vit' is a vision model: give --corpus builtin-images"):
        plan_extraction(str(vision_models["vit"]), "builtin", tmp_path / "s")
    with pytest.raises(CorpusError, match="'bert' reads text: builtin-images needs a vision model"):
        plan_extraction("minilm", "builtin-images", tmp_path / "s")


def test_text_store_has_no_thumbnails(builtin_store):
    with pytest.raises(qkscale.errors.QKScaleError, match="holds text, not images"):
        builtin_store.thumbnail(0)
