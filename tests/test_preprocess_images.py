"""The image downloader, offline: file:// links and a fake fetcher stand in for the network."""
import os
import urllib.error

import pytest

from dataset_preprocess.amazon import read_metadata
from dataset_preprocess.cli import main
from dataset_preprocess.images import download_images, read_manifest
from recbole_missrec.encoders.image import find_image, load_image

pytest_plugins = ["preprocess_fixtures"]  # tiny encoders and the raw Amazon sample


def test_download_checks_images_and_resumes_from_the_manifest(amazon_sample, tmp_path):
    _, urls = read_metadata(amazon_sample["meta"])
    urls["B000000002"] = ["file:///nowhere/dead.jpg"]  # an item whose link is dead
    image_dir = str(tmp_path / "images")
    counts = download_images(urls, image_dir, retries=1, backoff=0, workers=3, show_progress=False)
    good = {item for item, kind in amazon_sample["image"].items() if kind in ("rgb", "grey", "rgba")}
    bad = set(urls) - good
    assert counts == {"ok": len(good), "cached": 0, "failed": len(bad), "skipped_failed": 0}
    for item in good:
        image, status = load_image(find_image(image_dir, item))
        assert status in ("ok", "converted")
    assert not any(find_image(image_dir, item) for item in bad)  # error pages and truncated files are not kept
    manifest = read_manifest(image_dir)
    assert {item for item, record in manifest.items() if record["status"] == "failed"} == bad
    assert manifest["B000000002"]["attempts"] == 2 and "dead.jpg" in manifest["B000000002"]["error"]
    assert manifest["B000000006"]["attempts"] == 1  # not an image: retrying will not help

    again = download_images(urls, image_dir, backoff=0, show_progress=False)
    assert again == {"ok": 0, "cached": len(good), "failed": 0, "skipped_failed": len(bad)}
    retried = download_images(urls, image_dir, backoff=0, retry_failed=True, show_progress=False)
    assert retried["failed"] == len(bad) and retried["cached"] == len(good)


def test_fallback_links_retries_and_permanent_errors(tmp_path, amazon_sample):
    picture = open(os.path.join(amazon_sample["image_source"], "B000000000.jpg"), "rb").read()
    attempts = []

    def fetcher(url, timeout):
        attempts.append(url)
        if url == "http://gone":
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        if url == "http://flaky" and attempts.count(url) < 3:
            raise TimeoutError("timed out")
        return picture

    image_dir = str(tmp_path / "images")
    counts = download_images({"a": ["http://gone", "http://flaky"]}, image_dir, retries=2, backoff=0,
                             fetcher=fetcher, show_progress=False)
    assert counts["ok"] == 1
    assert attempts == ["http://gone", "http://flaky", "http://flaky", "http://flaky"]
    assert read_manifest(image_dir)["a"]["url"] == "http://flaky"
    assert find_image(image_dir, "a").endswith("a.jpg")


def test_download_command_restricts_to_the_dataset_items(amazon_sample, tmp_path, capsys):
    folder = str(tmp_path / "Sample")
    main(["amazon", "--ratings", amazon_sample["ratings"], "--meta", amazon_sample["meta"], "--output-dir", folder])
    image_dir = str(tmp_path / "images")
    main(["download-images", "--meta", amazon_sample["meta"], "--dataset-dir", folder, "--image-dir", image_dir,
          "--backoff", "0", "--quiet"])
    assert '"ok": ' in capsys.readouterr().out
    downloaded = {name.rsplit(".", 1)[0] for name in os.listdir(image_dir) if name != "manifest.jsonl"}
    with open(os.path.join(folder, "Sample.item2index"), encoding="utf-8") as handle:
        kept = {line.split("\t")[0] for line in handle}
    assert downloaded and downloaded <= kept
    assert "B000000025" not in downloaded  # has an image, but the 5-core removed it


@pytest.mark.parametrize("link", ["ftp://example.com/a.jpg", "", None])
def test_metadata_ignores_unusable_links(tmp_path, link):
    meta = tmp_path / "meta.json"
    meta.write_text('{"asin": "X", "title": "t", "imageURL": [%s]}\n' % (f'"{link}"' if link else ""))
    texts, urls = read_metadata(str(meta))
    assert texts == {"X": "t."} and urls == {}
