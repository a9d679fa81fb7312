"""Item attributes for FDSA and S3Rec, derived from a dataset's ``.text`` file into a working copy.

The benchmark datasets ship no atomic ``.item`` file, only ``<name>.text`` (``ASIN<TAB>title. categories.
brand. ``) and ``<name>.item2index`` (``ASIN<TAB>index``, the index being the item token). The category
path is the second-to-last ". "-separated field (titles may themselves contain ". ", so we count from the
end); its level boundaries are lost (levels are joined by spaces), so the attribute is the set of its
words: lower-cased, alphanumeric, without the root "Industrial & Scientific" every item shares, in order of
first appearance. Items with an empty category path get the single token ``no_category``.
"""
import os
import re

from recbole_missrec.atomic import atomic_open

CATEGORY_FIELD = "categories"
ROOT_CATEGORY = "Industrial & Scientific"
NO_CATEGORY = "no_category"
_WORD = re.compile(r"[a-z0-9]+")


def category_path(text):
    """The category field of ``title. categories. brand. `` ('' when the item has none)."""
    fields = text.split(". ")
    return fields[-3].strip() if len(fields) >= 3 else ""


def category_tokens(path):
    """Distinct lower-case words of a category path, without the shared root, in first-seen order."""
    if path.startswith(ROOT_CATEGORY):
        path = path[len(ROOT_CATEGORY):]
    words = list(dict.fromkeys(_WORD.findall(path.lower())))
    return words or [NO_CATEGORY]


def read_two_columns(path, skip_header):
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1 if skip_header else 0:]
    return dict(line.split("\t", 1) for line in lines if line.strip())


def write_item_file(source_folder, name, target):
    """Write ``target`` (an atomic ``.item``: ``item_id:token  categories:token_seq``) from the source
    folder's ``.text`` and ``.item2index``. Returns the number of items written."""
    texts = read_two_columns(os.path.join(source_folder, f"{name}.text"), skip_header=True)
    index = read_two_columns(os.path.join(source_folder, f"{name}.item2index"), skip_header=False)
    missing = sorted(set(index) - set(texts))
    if missing:
        raise ValueError(f"{name}.text lacks {len(missing)} items of {name}.item2index, e.g. {missing[0]}")
    rows = sorted((int(token), category_tokens(category_path(texts[asin]))) for asin, token in index.items())
    with atomic_open(target, "w", encoding="utf-8") as handle:
        handle.write(f"item_id:token\t{CATEGORY_FIELD}:token_seq\n")
        handle.writelines(f"{token}\t{' '.join(words)}\n" for token, words in rows)
    return len(rows)


def can_derive(source_folder, name):
    """True when the folder has an ``.item`` file or the two files the derivation needs."""
    present = set(os.listdir(source_folder))
    return f"{name}.item" in present or {f"{name}.text", f"{name}.item2index"} <= present


def prepare_working_copy(source_folder, work_root):
    """A copy of the dataset folder under ``work_root`` (symbolic links to every source file) plus a
    derived ``.item`` when the source has none. Returns the new data_path (the folder holding it).

    All models read this copy, so they see the same files; only FDSA and S3Rec load the ``.item``.
    """
    source_folder = os.path.abspath(source_folder)
    name = os.path.basename(source_folder.rstrip(os.sep))
    folder = os.path.join(work_root, name)
    os.makedirs(folder, exist_ok=True)
    same_folder = os.path.realpath(folder) == os.path.realpath(source_folder)  # data derived in place (new-items)
    for entry in [] if same_folder else os.listdir(source_folder):
        link, target = os.path.join(folder, entry), os.path.join(source_folder, entry)
        if os.path.islink(link) and os.readlink(link) != target:  # a copy made from another source folder
            os.remove(link)
        if not os.path.lexists(link):
            os.symlink(target, link)
    item_file = os.path.join(folder, f"{name}.item")
    if not os.path.exists(item_file) and can_derive(source_folder, name):
        write_item_file(source_folder, name, item_file)
    return work_root
