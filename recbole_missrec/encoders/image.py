"""Item images -> one L2-normalised CLIP image embedding per item, or an all-zero row when there is none.

Product images go missing (dead links), arrive truncated or are not images at all; each such item gets a
zero row, the plugin's mark of a missing modality, and is named in the report instead of stopping a run
of thousands of items. Images are read with pillow and prepared by the checkpoint's own image processor
in its pillow backend, so torchvision is not needed.
"""
import os
import urllib.parse
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModelWithProjection

from recbole_missrec.encoders.common import clip_tower_config, l2_normalise, quiet_loading, resolve_device

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
NON_RGB_POLICIES = ("convert", "skip")
PROBLEMS = ("missing", "corrupt", "non_rgb")


def image_file_stem(item_id):
    """File name (without extension) of an item's image: the item id, with path separators escaped."""
    return urllib.parse.quote(str(item_id), safe="")


def find_image(folder, item_id):
    """Path of ``<folder>/<item id>.<ext>`` for the first known image extension present, else None."""
    stem = os.path.join(folder, image_file_stem(item_id))
    for extension in IMAGE_EXTENSIONS + tuple(ext.upper() for ext in IMAGE_EXTENSIONS):
        if os.path.isfile(stem + extension):
            return stem + extension
    return None


def _to_rgb(image):
    """Transparent pixels go onto white, the usual product-photo background, rather than black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path, non_rgb="convert"):
    """(RGB image or None, status); status is ``ok``, ``converted`` or one of :data:`PROBLEMS`.

    ``non_rgb="skip"`` treats grey, palette, CMYK or alpha images as missing instead of converting them.
    """
    if path is None:
        return None, "missing"
    try:
        with Image.open(path) as opened:
            image = opened.copy()  # decodes the whole file, so truncation shows up here
    except Exception:  # pillow raises many types for bad files (OSError, SyntaxError, DecompressionBombError, ...)
        return None, "corrupt"
    if image.mode == "RGB":
        return image, "ok"
    if non_rgb == "skip":
        return None, "non_rgb"
    try:
        return _to_rgb(image), "converted"
    except Exception:
        return None, "corrupt"


@dataclass
class ImageReport:
    """What happened to each item's image: counts, and the ids of the items left with a zero row."""

    total: int = 0
    encoded: int = 0
    converted: int = 0
    problems: dict = field(default_factory=lambda: {problem: [] for problem in PROBLEMS})

    def add(self, item_id, status):
        self.total += 1
        if status in PROBLEMS:
            self.problems[status].append(str(item_id))
            return
        self.encoded += 1
        self.converted += status == "converted"

    def merge(self, other):
        self.total += other.total
        self.encoded += other.encoded
        self.converted += other.converted
        for problem in PROBLEMS:
            self.problems[problem].extend(other.problems[problem])

    def as_dict(self):
        counts = {problem: len(items) for problem, items in self.problems.items()}
        return {"total": self.total, "encoded": self.encoded, "converted": self.converted, **counts,
                "items": {problem: list(items) for problem, items in self.problems.items()}}

    @classmethod
    def from_dict(cls, data):
        report = cls(total=data["total"], encoded=data["encoded"], converted=data["converted"])
        for problem in PROBLEMS:
            report.problems[problem] = list(data["items"][problem])
        return report


class ImageEncoder:
    """CLIP's vision tower and projection, loaded once for a whole dataset."""

    def __init__(self, model_name_or_path, device="cpu", non_rgb="convert"):
        if non_rgb not in NON_RGB_POLICIES:
            raise ValueError(f"unknown non_rgb policy {non_rgb!r}; use one of {NON_RGB_POLICIES}")
        self.device = resolve_device(device)
        self.non_rgb = non_rgb
        config = AutoConfig.from_pretrained(model_name_or_path)
        if config.model_type not in ("clip", "clip_vision_model"):
            raise ValueError(
                f"{model_name_or_path} is a {config.model_type!r} checkpoint; image features need a CLIP "
                f"checkpoint (CLIPModel or CLIPVisionModelWithProjection), e.g. openai/clip-vit-base-patch32"
            )
        with quiet_loading():
            if config.model_type == "clip":
                self.model = CLIPVisionModelWithProjection.from_pretrained(
                    model_name_or_path, config=clip_tower_config(config, "vision")
                )
            else:
                self.model = CLIPVisionModelWithProjection.from_pretrained(model_name_or_path)
            self.processor = AutoImageProcessor.from_pretrained(model_name_or_path, backend="pil")
        self.model.to(self.device).eval()
        self.dim = self.model.config.projection_dim

    @torch.inference_mode()
    def encode_images(self, images):
        """float32 [len(images), dim], unit rows, for already loaded RGB images."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return l2_normalise(self.model(pixel_values=pixels).image_embeds.float().cpu().numpy())

    def encode_folder(self, item_ids, folder, batch_size=32, show_progress=True):
        """(table [len(item_ids), dim], :class:`ImageReport`); row r is the image of ``item_ids[r]``."""
        table = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        report = ImageReport()
        with tqdm(total=len(item_ids), desc="image", unit="item", disable=not show_progress) as bar:
            for start in range(0, len(item_ids), batch_size):
                rows, images = [], []
                for row in range(start, min(start + batch_size, len(item_ids))):
                    image, status = load_image(find_image(folder, item_ids[row]), self.non_rgb)
                    report.add(item_ids[row], status)
                    if image is not None:
                        rows.append(row)
                        images.append(image)
                table[rows] = self.encode_images(images)
                bar.update(min(batch_size, len(item_ids) - start))
        return table, report


def encode_image_folder(item_ids, folder, model_name_or_path, batch_size=32, device="cpu", non_rgb="convert",
                        show_progress=True):
    """One-shot form of :class:`ImageEncoder`: (table, report) for the images ``<folder>/<item id>.<ext>``."""
    encoder = ImageEncoder(model_name_or_path, device=device, non_rgb=non_rgb)
    return encoder.encode_folder(item_ids, folder, batch_size=batch_size, show_progress=show_progress)
