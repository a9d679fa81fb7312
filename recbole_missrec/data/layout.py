"""The dataset folder's interaction files, checked (and the benchmark layout detected) before RecBole reads them.

RecBole reads ``<name>.inter``, or the pre-split ``<name>.train/.valid/.test.inter`` when
``benchmark_filename`` is set; a folder holding only the pre-split files without that setting, or a split
file with no rows, ends in an unrelated error deep inside RecBole (``max() arg is an empty sequence``).

RecBole's default ``load_col`` reads only user and item from ``<name>.inter``, but it orders every user's
interactions by ``TIME_FIELD`` (sequential models always, other models under ``order: TO``): a folder holding
an ordinary atomic file with timestamps would otherwise end in ``[timestamp] is not exist in interaction``.
"""
import os

from recbole.utils import ModelType

BENCHMARK_PARTS = ("train", "valid", "test")


def _header_fields(path):
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n")
    return [field.split(":")[0] for field in header.split("\t") if field]


def _has_rows(path):
    with open(path, encoding="utf-8") as handle:
        handle.readline()
        return any(line.strip() for line in handle)


def check_interaction_files(config, logger):
    """Raise a clear error for a missing or empty split; set the benchmark layout's three settings when the
    folder holds only pre-split files and the user set none of them (and say so in the log)."""
    folder, name = config["data_path"], config["dataset"]
    if not os.path.isdir(folder):
        raise ValueError(f"unknown dataset {name}: there is no folder {folder}; set data_path to the folder that "
                         f"holds {name}/")
    atomic = os.path.join(folder, f"{name}.inter")
    parts = config["benchmark_filename"]
    if not parts and not os.path.isfile(atomic):
        found = [part for part in BENCHMARK_PARTS if os.path.isfile(os.path.join(folder, f"{name}.{part}.inter"))]
        if not found:
            raise ValueError(f"dataset {name}: {folder} holds neither {name}.inter nor {name}.train/.valid/.test.inter")
        parts = found
        fields = _header_fields(os.path.join(folder, f"{name}.{found[0]}.inter"))
        config["benchmark_filename"] = found
        config["alias_of_item_id"] = config["alias_of_item_id"] or [f for f in fields if f.endswith(config["LIST_SUFFIX"])]
        config["load_col"] = {"inter": fields}
        logger.info(f"{folder} holds pre-split files {[f'{name}.{part}.inter' for part in found]}: read as the "
                    f"benchmark layout (benchmark_filename={found}, load_col={{'inter': {fields}}})")
    if not parts:
        require_time_field(config, atomic, logger)
    files = [os.path.join(folder, f"{name}.{part}.inter") for part in parts] if parts else [atomic]
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: benchmark_filename={parts} names it; write it or change "
                                    f"benchmark_filename")
        if not _has_rows(path):
            raise ValueError(f"{path} has no interactions (only a header or nothing): a dataset needs rows in every "
                             f"split it reads; rebuild it (python -m dataset_preprocess) or fix the file")


def require_time_field(config, path, logger):
    """Make RecBole read the time field of the atomic file when the run orders interactions by time and
    ``load_col`` leaves it out (RecBole's default); name the file and the fix when it has no such column."""
    time_field = config["TIME_FIELD"]
    ordered = config["MODEL_TYPE"] == ModelType.SEQUENTIAL or config["eval_args"]["order"] == "TO"
    load_col = config["load_col"]
    if not (ordered and os.path.isfile(path)) or (load_col is not None and time_field in load_col.get("inter", [])):
        return
    fields = _header_fields(path)
    if time_field not in fields:
        raise ValueError(f"{path} has no {time_field} column (its fields: {fields}), and this run orders each user's "
                         f"interactions by time: add a '{time_field}:float' column, or write the pre-split files "
                         f"{os.path.basename(path)[:-len('.inter')]}.train/.valid/.test.inter (python -m dataset_preprocess)")
    if load_col is not None and "inter" in load_col:
        config["load_col"] = dict(load_col, inter=[*load_col["inter"], time_field])
        logger.info(f"{path}: reading its {time_field} column too (load_col['inter'] left it out, and this run "
                    f"orders interactions by time)")
