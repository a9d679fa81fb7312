"""The dataset folder the plugin reads: file names, headers, and atomic reads and writes of each file.

``<dir>/<NAME>/<NAME>.<suffix>``: benchmark splits (``train.inter``, ``valid.inter``, ``test.inter``), the
plain atomic ``inter``, ``item2index``, ``user2index``, ``text``, feature tables (``feat1CLS`` text,
``feat2CLS`` word-dropped text, ``feat3CLS`` image), multi-vector features (``sent.npz``, ``imgkw.npz``;
see ``multivector.py``) and, for merged sets, ``pt_datasets``. Item and user
tokens in every ``.inter`` file are integer indices, because feature row r belongs to item token r.
Every file is written to a temporary name and renamed, so an interrupted run never leaves half a file.
"""
import json
import os
import re

from recbole_missrec import atomic

from dataset_preprocess.interactions import leave_one_out

BENCHMARK_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"
INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
TEXT_HEADER = "item_id:token\ttext:token_seq"
SPLITS = ("train", "valid", "test")
FEATURE_SUFFIXES = {"feat1CLS": "text", "feat2CLS": "augmented text", "feat3CLS": "image"}
_WHITESPACE = re.compile(r"\s+")


def dataset_name(dataset_dir, name=None):
    """The folder's base name is the dataset name unless one is given (RecBole's own convention)."""
    return name or os.path.basename(os.path.normpath(dataset_dir))


def dataset_file(dataset_dir, name, suffix):
    return os.path.join(dataset_dir, f"{name}.{suffix}")


def atomic_write_lines(path, lines):
    """Write ``lines`` (strings without newline) through a temporary file renamed into place."""
    with atomic.atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")


def atomic_write_json(path, data):
    """The dataset folder's reports and statistics: indented, keys sorted, so that they diff well."""
    atomic.atomic_write_json(path, data, indent=2, sort_keys=True)


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def one_line(text):
    """Tabs and newlines would break the TSV files, so text is flattened to single spaces."""
    return _WHITESPACE.sub(" ", str(text)).strip()


def write_index(path, ids):
    """``original id<TAB>index`` lines, index = position in ``ids``."""
    atomic_write_lines(path, (f"{original}\t{index}" for index, original in enumerate(ids)))


def read_index(path):
    """Original ids in index order; the indices must be exactly 0..N-1, since they are feature rows."""
    by_index = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            original, _, index = line.rpartition("\t")
            if not original or not index.isdigit():
                raise ValueError(f"{path}:{number}: expected 'original id<TAB>index', got {line!r}")
            by_index[int(index)] = original
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{path}: indices are not exactly 0..{len(by_index) - 1}")
    return [by_index[index] for index in range(len(by_index))]


def write_texts(path, ids, texts):
    atomic_write_lines(path, [TEXT_HEADER, *(f"{item}\t{one_line(text)}" for item, text in zip(ids, texts))])


def read_texts(path):
    """{original item id: text}; the header line is skipped."""
    texts = {}
    with open(path, encoding="utf-8") as handle:
        next(handle, None)
        for line in handle:
            item, _, text = line.rstrip("\n").partition("\t")
            if item:
                texts[item] = text.strip()
    return texts


def format_timestamp(value):
    """Integral timestamps (Amazon's unix seconds) are written without a fraction or an exponent."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def benchmark_line(user, history, target):
    return f"{user}\t{' '.join(map(str, history))}\t{target}"


def parse_benchmark_line(line):
    """(user, history, target) as ints from one benchmark row."""
    user, history, target = line.rstrip("\n").split("\t")
    return int(user), [int(item) for item in history.split()], int(target)


def read_benchmark(path):
    """Rows of one benchmark split as (user, history, target)."""
    with open(path, encoding="utf-8") as handle:
        header = next(handle, "").rstrip("\n")
        if header != BENCHMARK_HEADER:
            raise ValueError(f"{path}: header {header!r}, expected {BENCHMARK_HEADER!r}")
        for line in handle:
            if line.strip():
                yield parse_benchmark_line(line)


def count_rows(path):
    """Data rows of a file with a header line."""
    with open(path, "rb") as handle:
        return max(sum(1 for line in handle if line.strip()) - 1, 0)


def feature_dim(path, n_rows):
    """Row width of a feature file: from its ``.json`` report when there is one, else from its size.

    Raw feature files carry no header, so for a file written elsewhere the only clue is size / rows.
    """
    report = path + ".json"
    if os.path.isfile(report):
        return int(read_json(report)["dim"])
    size = os.path.getsize(path)
    if n_rows <= 0 or size % (4 * n_rows):
        raise ValueError(f"{path}: {size} bytes is not {n_rows} rows of float32; cannot tell its dimension")
    return size // (4 * n_rows)


def is_processed(dataset_dir, name):
    """True when the folder already holds the benchmark layout (the files every loader needs)."""
    needed = [f"{split}.inter" for split in SPLITS] + ["item2index", "user2index"]
    return all(os.path.isfile(dataset_file(dataset_dir, name, suffix)) for suffix in needed)


def write_dataset(data, dataset_dir, name, max_history=50):
    """Every text file of the layout for one :class:`~dataset_preprocess.interactions.SequenceData`."""
    write_index(dataset_file(dataset_dir, name, "item2index"), data.item_ids)
    write_index(dataset_file(dataset_dir, name, "user2index"), data.user_ids)
    write_texts(dataset_file(dataset_dir, name, "text"), data.item_ids, data.item_texts)
    frame = data.interactions
    atomic_write_lines(
        dataset_file(dataset_dir, name, "inter"),
        [INTER_HEADER, *(f"{user}\t{item}\t{format_timestamp(time)}"
                         for user, item, time in zip(frame["user"], frame["item"], frame["timestamp"]))],
    )
    rows = {split: [BENCHMARK_HEADER] for split in SPLITS}
    for user, sequence in enumerate(data.sequences()):
        train, valid, test = leave_one_out(sequence.tolist(), max_history)
        rows["train"].extend(benchmark_line(user, history, target) for history, target in train)
        rows["valid"].append(benchmark_line(user, *valid))
        rows["test"].append(benchmark_line(user, *test))
    for split in SPLITS:
        atomic_write_lines(dataset_file(dataset_dir, name, f"{split}.inter"), rows[split])
