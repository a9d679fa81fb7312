"""Optional downloader for item images named in the Amazon metadata.

Many Amazon image links are dead, and a download of tens of thousands of images gets interrupted. Each
image is fetched with a timeout and a few retries (fallback links are tried in turn), checked to be a
decodable image, and written atomically as ``<image_dir>/<item id>.<ext>``, the layout the image
encoder reads. Files already there are a cache, and ``manifest.jsonl`` records every item's outcome so
a re-run only tries what is left (failed items too with ``retry_failed``).
"""
import io
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from PIL import Image
from tqdm.auto import tqdm

from recbole_missrec.atomic import atomic_open
from recbole_missrec.encoders.image import find_image, image_file_stem


MANIFEST = "manifest.jsonl"
MAX_BYTES = 32 * 2**20
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
# Pillow reads by content; any other format only needs an extension the image encoder looks for.
FALLBACK_EXTENSION = ".jpg"
USER_AGENT = "recbole-missrec-dataset-preprocess"


def read_manifest(image_dir):
    """{item id: last recorded outcome}."""
    path = os.path.join(image_dir, MANIFEST)
    outcomes = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by an interruption
                outcomes[record["item"]] = record
    return outcomes


def fetch(url, timeout):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    return data


def image_format(data):
    """Pillow's format name when ``data`` decodes as an image; raises otherwise (error pages, truncation)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.format


def _permanent(error):
    """A missing page stays missing: retrying a 404/410 only wastes time."""
    return isinstance(error, urllib.error.HTTPError) and error.code in (400, 403, 404, 410)


def download_one(item, urls, image_dir, timeout=10.0, retries=2, backoff=1.0, fetcher=fetch):
    """Outcome record of one item: each link is tried up to ``retries + 1`` times, best link first."""
    attempts, error = 0, "no image link"
    for url in urls:
        for attempt in range(retries + 1):
            attempts += 1
            try:
                data = fetcher(url, timeout)
                extension = EXTENSIONS.get(image_format(data), FALLBACK_EXTENSION)
                path = os.path.join(image_dir, image_file_stem(item) + extension)
                with atomic_open(path, "wb") as handle:
                    handle.write(data)
                return {"item": item, "status": "ok", "url": url, "file": os.path.basename(path),
                        "attempts": attempts}
            except Exception as caught:  # network, HTTP and decoding errors all mean "try again or give up"
                error = f"{type(caught).__name__}: {caught}"
                if _permanent(caught) or isinstance(caught, (Image.UnidentifiedImageError, SyntaxError)):
                    break
                if attempt < retries and backoff:
                    time.sleep(backoff * 2**attempt)
    return {"item": item, "status": "failed", "error": error, "attempts": attempts}


def download_images(urls_by_item, image_dir, timeout=10.0, retries=2, backoff=1.0, workers=8,
                    retry_failed=False, show_progress=True, fetcher=fetch):
    """Fetch every item's image that is not there yet; returns counts {ok, cached, failed, skipped_failed}."""
    os.makedirs(image_dir, exist_ok=True)
    previous = read_manifest(image_dir)
    counts = {"ok": 0, "cached": 0, "failed": 0, "skipped_failed": 0}
    todo = {}
    for item, urls in urls_by_item.items():
        if find_image(image_dir, item):
            counts["cached"] += 1
        elif previous.get(item, {}).get("status") == "failed" and not retry_failed:
            counts["skipped_failed"] += 1
        else:
            todo[item] = urls
    with open(os.path.join(image_dir, MANIFEST), "a", encoding="utf-8") as manifest, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(todo), desc="images", unit="item", disable=not show_progress) as bar:
        futures = [pool.submit(download_one, item, urls, image_dir, timeout, retries, backoff, fetcher)
                   for item, urls in todo.items()]
        for future in as_completed(futures):
            outcome = future.result()
            counts[outcome["status"]] += 1
            manifest.write(json.dumps(outcome) + "\n")
            manifest.flush()
            bar.update(1)
    return counts
