"""Where content helps: accuracy on rare and unseen items.

    python benchmarks/coldstart.py buckets --results benchmarks/results/Scientific
    python benchmarks/coldstart.py new-items --dataset Scientific --data_path data --seeds 1 2 3
    python benchmarks/coldstart.py targets --dataset Scientific --data_path data --results benchmarks/results/Scientific

``buckets`` (protocol a): every finished run of a ``benchmarks/run.py`` sweep is reloaded from its
checkpoint (``load_data_and_model``), its test rows are ranked against all items, and HIT/NDCG@10 are
reported per popularity bucket of the test target: how often the item occurs in the training
interactions (as a target or in a history): 0, 1-4, 5-9, 10-19, >= 20. Mean ± std over the seeds of each
variant, the bucket sizes, a plot. A run whose checkpoint is gone (a lost work folder) keeps the figures an
earlier pass wrote for it, so seeds can be added to a folder after its first runs' checkpoints are lost; a
work folder moved or renamed whole is named with ``--moved OLD=NEW`` (records keep absolute paths).
Writes <results>/coldstart_buckets.json, .md and .png; ``--split valid`` ranks the validation rows instead
(the checkpoint is the best validation epoch's) into coldstart_buckets_valid.*, which puts a valid-to-test
gap side by side per bucket.

``new-items`` (protocol b): a seeded random share of the items (``--holdout``, 10 %; ``--split-seed``) is
removed from training and validation entirely (``new_items.py`` has the exact rule); every model is trained
without them by ``benchmarks/run.py`` on the derived dataset ``<dataset>-new`` (its records in
``--sweep-out``, default benchmarks/results/<dataset>-new; resumable); then the held-out items are added
to each trained model from their features (plugin models: ``add_items`` through the serving API; SASRec:
untrained ID rows, the floor), and the original test rows whose target is held out are ranked against all
items: HIT/NDCG@10 of the top 10. For contrast, the test rows of the derived dataset (warm targets), ranked
the same way, and the expectation of a random ranking. Writes <out>/coldstart_new_items.json, .md and .png
(default out: benchmarks/results/<dataset>).

``few-users`` (protocol c): a target domain with little training data, where pre-training should pay. The
training rows of a seeded random share of the users (``--share``; every prefix row of a chosen user) are
kept, validation and test rows of every user are not touched, so each run is scored on the full dataset's
rows; the models (with ``--pretrained`` checkpoints, their pre-trained twins) are trained by
``benchmarks/run.py`` on the derived dataset ``<dataset>-users<percent>``, whose records, table.md and
split.json go to ``--out`` (default benchmarks/results/<dataset>-users<percent>; resumable).

``targets``: how cold the validation and test targets are. Leave-one-out puts each user's last item in
test and the one before it in validation, so test targets are the later, and on the Amazon data the rarer,
items: the share of each file's targets per popularity bucket (training interactions, counted as
``buckets`` counts them). With ``--results`` folders that ``buckets`` has scored, each variant's test
NDCG@10 is also given re-weighted to the validation targets' mix (its per-bucket scores weighted by the
validation shares), beside its best validation score: how much of a valid-to-test gap the colder test
targets explain. Writes <out>/target_popularity.json and .md (default out: benchmarks/results/<dataset>).

The published papers claim gains on cold-start and long-tail items without a protocol; these are ours.
"""
import argparse
import json
import math
import os
import shlex
import sys
from statistics import mean, stdev
from time import perf_counter

import torch

import run as sweep_harness
from new_items import (
    PARTS, cases_of, choose_share, make_split, plugin_top_k, ranks_in_top_k, read_parts, row_counts, sasrec_top_k,
    write_derived,
)
from recbole_missrec.atomic import atomic_open, atomic_write_json
from recbole_missrec.paths import properties_dir
from report import add_moved_option, json_object, load_runs, moved_folders, read_own_json, relocated
from variants import VARIANTS

BUCKETS = ((0, 0), (1, 4), (5, 9), (10, 19), (20, None))
K = 10
HERE = os.path.dirname(os.path.abspath(__file__))
NEW_ITEM_MODELS = ["MISSRec-inductive", "MISSRec-transductive", "MSM4SR-inductive", "SASRec"]
FEW_USER_MODELS = ["MISSRec-inductive", "SASRec-length-aware"]
CASES = {"new": "held-out targets", "warm": "warm targets"}


def bucket_name(low, high):
    return f"{low}" if low == high else (f">={low}" if high is None else f"{low}-{high}")


def in_bucket(counts, low, high):
    """[N] bool: which ``counts`` fall in the bucket low..high (``high`` None: no upper bound)."""
    return (counts >= low) if high is None else (counts >= low) & (counts <= high)


def training_counts(train_dataset, n_items):
    """[n_items] training interactions per item: each train row's target, plus each user's first item (the
    history of the row with one item). Prefix rows repeat a user's earlier items in their histories, so
    counting histories would count one interaction many times."""
    config = train_dataset.config
    feat = train_dataset.inter_feat
    targets = feat[config["ITEM_ID_FIELD"]]
    first = feat[config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]][feat[config["ITEM_LIST_LENGTH_FIELD"]] == 1, 0]
    return torch.bincount(torch.cat([targets, first]), minlength=n_items)


@torch.no_grad()
def target_ranks(model, test_data, device):
    """Per test row: (how many items score higher than the target, how many others score exactly as high,
    target id); padding never ranked. An inductive model gives items with identical features identical
    scores, so ties are common: ``metrics_at_k`` takes the expectation over a random order among them,
    where counting only higher scores would flatter the model and a fixed order would favour some ids."""
    greater, ties, targets = [], [], []
    for interaction, _, _, positive in test_data:
        scores = model.full_sort_predict(interaction.to(device)).view(len(positive), -1)
        scores[:, 0] = float("-inf")
        above, tied = ranks_among_scores(scores, positive.to(device))
        greater.append(above.cpu())
        ties.append(tied.cpu())
        targets.append(positive)
    return torch.cat(greater), torch.cat(ties), torch.cat(targets)


def ranks_among_scores(scores, targets):
    """Per row of ``scores`` [B, N]: (items scored above the row's target, other items scored as it), [B] each."""
    target = scores.gather(1, targets.unsqueeze(1))
    return (scores > target).sum(1), (scores == target).sum(1) - 1


def row_metrics_at_k(ranks, ties=None, k=K):
    """Per row, HIT@k and NDCG@k ([N] each) of 0-based ranks; with ``ties`` (others scored as the target)
    the expectation over a uniformly random order of the tied items: the target's rank is then uniform on
    ranks..ranks+ties."""
    ties = torch.zeros_like(ranks) if ties is None else ties
    discount = torch.cat([torch.zeros(1), (1 / torch.log2(torch.arange(k, dtype=torch.float) + 2)).cumsum(0)])
    first, past = ranks.clamp(max=k), (ranks + ties + 1).clamp(max=k)  # positions first..past-1 are in the top k
    spread = (ties + 1).float()
    return (past - first).float() / spread, (discount[past] - discount[first]) / spread


def row_metrics(ranks, ties=None, topk=(K,)):
    """{"hit@k": [N], "ndcg@k": [N]} per row for each k of ``topk`` (``row_metrics_at_k``)."""
    rows = {}
    for k in topk:
        rows[f"hit@{k}"], rows[f"ndcg@{k}"] = row_metrics_at_k(ranks, ties, k)
    return rows


def metrics_at_k(ranks, ties=None):
    """HIT/NDCG@K over the rows (``row_metrics``, averaged)."""
    averaged = {key: values.mean().item() for key, values in row_metrics(ranks, ties).items()}
    return {**averaged, "rows": int(ranks.numel())}


def bucket_metrics(ranks, counts, ties=None):
    """{bucket: metrics of the rows whose target falls in it} plus "all"."""
    ties = torch.zeros_like(ranks) if ties is None else ties
    out = {"all": metrics_at_k(ranks, ties)}
    for low, high in BUCKETS:
        chosen = in_bucket(counts, low, high)
        out[bucket_name(low, high)] = metrics_at_k(ranks[chosen], ties[chosen]) if chosen.any() else {"rows": 0}
    return out


def reload_run(record, data_path, split="test"):
    """(config, model, dataset, train_data, the ``split``'s data) of one finished run, reloaded quietly from its
    checkpoint."""
    from recbole_missrec.quick_start import load_data_and_model

    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(
        record["checkpoint"], data_path=data_path, config_dict={"show_progress": False, "state": "WARNING"})
    return config, model, dataset, train_data, valid_data if split == "valid" else test_data


def sweep_figure(record, split):
    """(key, value) of the sweep's own NDCG@10 on ``split``, kept beside the bucket figures for a cross-check:
    the test figure, or the best validation score (the checkpoint is the best validation epoch's)."""
    if split == "valid":
        return "recbole_valid_score", record["best_valid_score"]
    return "recbole_test_ndcg@10", record["test"]["ndcg@10"]


def buckets_stem(split):
    """The file name (no extension) of a ``buckets`` pass: test keeps the name it always had."""
    return "coldstart_buckets" if split == "test" else f"coldstart_buckets_{split}"


def evaluate_run(record, data_path, split="test"):
    """Bucket metrics of one finished run on ``split``'s rows (its checkpoint reloaded)."""
    config, model, dataset, train_data, eval_data = reload_run(record, data_path, split)
    counts = training_counts(train_data.dataset, dataset.item_num)
    ranks, ties, targets = target_ranks(model, eval_data, config["device"])
    result = bucket_metrics(ranks, counts[targets], ties)
    key, value = sweep_figure(record, split)
    result[key] = value
    return result


def records_by_variant(records):
    """{variant: {seed: run record}} of run records, the lookup ``run_record_of`` matches results against."""
    grouped = {}
    for record in records:
        grouped.setdefault(record["variant"], {})[record["seed"]] = record
    return grouped


def run_record_of(result, records, split="test"):
    """The run record (of {seed: record}) a ``buckets`` result on ``split`` was scored from: by seed, or, in results
    written before they carried one, the record whose sweep figure is the result's (None when that is not unique)."""
    if "seed" in result:
        return records.get(result["seed"])
    found = [record for record in records.values()
             if result.get(sweep_figure(record, split)[0]) == sweep_figure(record, split)[1]]
    return found[0] if len(found) == 1 else None


def earlier_bucket_results(path, records, split):
    """{(variant, seed): result} of an earlier ``buckets`` pass over the same folder, so a run whose checkpoint is
    gone keeps its figures when seeds are added later. ``records`` is {variant: {seed: run record}}: a result
    written before results carried their seed is matched to its run by the sweep figure (``run_record_of``)."""
    if not os.path.exists(path):
        return {}
    per_run = read_own_json(
        path, lambda data: data["per_run"], f"a {os.path.basename(path)} written by this script",
        "move it aside and re-run buckets; runs whose checkpoints are gone then need benchmarks/run.py again")
    earlier = {}
    for variant, results in per_run.items():
        for result in results:
            record = run_record_of(result, records.get(variant, {}), split)
            if record is not None:
                earlier[(variant, record["seed"])] = dict(result, seed=record["seed"])
    return earlier


def bucket_result(record, data_path, earlier, split="test"):
    """One run's bucket metrics on ``split``: from its checkpoint, or, where the checkpoint no longer exists (a
    lost work folder), the earlier pass's figures of the same run, checked against the run's record."""
    key = (record["variant"], record["seed"])
    if os.path.exists(record["checkpoint"]):
        return dict(evaluate_run(record, data_path, split), seed=record["seed"])
    kept = earlier.get(key)
    figure, value = sweep_figure(record, split)
    if kept is None or kept[figure] != value:
        raise SystemExit(f"{record['checkpoint']} (the checkpoint of {key[0]} seed {key[1]}) is missing and "
                         f"{buckets_stem(split)}.json holds no figures of that run matching its record: "
                         "re-run it with benchmarks/run.py, leave it out with --models or --seeds, or name its "
                         "work folder's new place with --moved OLD=NEW")
    print(f"{key[0]} seed {key[1]}: checkpoint gone, its earlier bucket figures kept", flush=True)
    return kept


def aggregate(per_run):
    """{variant: {bucket: {metric: (mean, std)}}} over seeds."""
    table = {}
    for variant, results in per_run.items():
        table[variant] = {}
        for bucket in results[0]:
            if not isinstance(results[0][bucket], dict):
                continue
            rows = results[0][bucket]["rows"]
            entry = {"rows": rows}
            for metric in ("hit@10", "ndcg@10"):
                values = [result[bucket][metric] for result in results if metric in result[bucket]]
                if values:
                    entry[metric] = (mean(values), stdev(values) if len(values) > 1 else 0.0)
            table[variant][bucket] = entry
    return table


def cell(value, seeds):
    """'mean ± std' of a (mean, std) pair; one seed has no spread to show, so its value stands alone."""
    return f"{value[0]:.4f} ± {value[1]:.4f}" if seeds > 1 else f"{value[0]:.4f}"


def markdown(table, metric, seed_counts, split="test"):
    """The bucket table of one metric; ``seed_counts`` {variant: runs} decides whether a cell shows a spread."""
    buckets = ["all"] + [bucket_name(low, high) for low, high in BUCKETS]
    variants = list(table)
    sizes = table[variants[0]]
    lines = ["| target's training interactions | " + " | ".join(buckets) + " |", "|---" * (len(buckets) + 1) + "|",
             f"| {split} rows | " + " | ".join(str(sizes[b]["rows"]) for b in buckets) + " |"]
    for variant in variants:
        cells = []
        for bucket in buckets:
            value = table[variant][bucket].get(metric)
            cells.append(cell(value, seed_counts[variant]) if value else "-")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(path, title, groups, series, xlabel=None, reference=None, ylabel="test"):
    """A PNG of grouped bars: ``series`` {label: [(mean, std) per group]}, std as error bars; ``reference``
    (label, value): a dashed horizontal line."""
    from report import pyplot

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(series)
    for index, (label, values) in enumerate(series.items()):
        axis.bar([i + index * width for i in range(len(groups))], [v[0] for v in values], width,
                 yerr=[v[1] for v in values], capsize=3, label=label)
    if reference:
        axis.axhline(reference[1], color="grey", linestyle="--", linewidth=1, label=reference[0])
    axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))], groups, fontsize=8)
    if xlabel:
        axis.set_xlabel(xlabel)
    axis.set_ylabel(f"{ylabel} NDCG@10 (mean ± std over seeds)")
    axis.set_title(title)
    axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def plot(table, path, title, split="test"):
    buckets = [bucket_name(low, high) for low, high in BUCKETS]
    series = {variant: [row[b].get("ndcg@10", (math.nan, 0.0)) for b in buckets] for variant, row in table.items()}
    bar_chart(path, title, buckets, series, xlabel=f"training interactions of the {split} target", ylabel=split)


def run_buckets(args):
    moves = moved_folders(args.moved)
    records = [relocated(record, moves) for record in load_runs(args.results)
               if record.get("status") == "ok" and record.get("checkpoint")
               and (not args.models or record["variant"] in args.models)
               and (not args.seeds or record["seed"] in args.seeds)]
    if not records:
        raise SystemExit(f"no finished run with a checkpoint in {args.results}/runs (re-run benchmarks/run.py)")
    stem = os.path.join(args.results, buckets_stem(args.split))
    earlier = earlier_bucket_results(stem + ".json", records_by_variant(records), args.split)
    per_run = {}
    for record in records:
        result = bucket_result(record, args.data_path or record["config"]["data_path"], earlier, args.split)
        per_run.setdefault(record["variant"], []).append(result)
        print(f"{record['variant']} seed {record['seed']}: NDCG@10 {result['all']['ndcg@10']:.4f} "
              f"(sweep: {sweep_figure(record, args.split)[1]:.4f})", flush=True)
    table = aggregate(per_run)
    name = os.path.basename(os.path.normpath(args.results))
    atomic_write_json(stem + ".json", {"split": args.split, "per_run": per_run, "table": table}, indent=1)
    seed_counts = {variant: len(results) for variant, results in per_run.items()}
    text = (f"# {name}: {args.split} accuracy by the target's training interactions\n\nNDCG@10\n\n"
            f"{markdown(table, 'ndcg@10', seed_counts, args.split)}\n\nHIT@10\n\n"
            f"{markdown(table, 'hit@10', seed_counts, args.split)}\n")
    with atomic_open(stem + ".md", "w") as handle:
        handle.write(text)
    plot(table, stem + ".png", f"{name}: {args.split} NDCG@10 by target popularity", args.split)
    print(text)


# ---- protocol (b): new items ----------------------------------------------------------------------
def new_item_variants(names):
    """The chosen variants: plugin models (served through ``add_items``) and SASRec (the floor)."""
    from recbole_missrec.utils import get_model, is_plugin_model

    def usable(name):
        variant = VARIANTS.get(name)
        return variant is not None and not variant.pretrained and (
            variant.model == "SASRec" or is_plugin_model(get_model(variant.model)))

    refused = [name for name in names if not usable(name)]
    if refused:
        raise SystemExit(f"new-items ranks plugin variants (new items through add_items) and SASRec; not {refused}")
    return list(names)


def settle_split(path, record, keys=("holdout", "split_seed", "held_out")):
    """Write the split record, or check that the one already there (from earlier runs of this sweep) is the
    same split (equal ``keys``): the trained runs belong to it."""
    if os.path.isfile(path):
        earlier = read_own_json(path, json_object, "a split record of coldstart.py",
                                "choose another output folder and --work (its runs belong to an unknown split)")
        if any(earlier.get(key) != record[key] for key in keys):
            recorded = ", ".join(f"{key} {earlier.get(key)}" for key in keys[:2])
            raise SystemExit(f"{path} records another split ({recorded}): its runs were trained on other "
                             f"rows; choose another output folder and --work")
    atomic_write_json(path, record, indent=1)


def sweep_argv(args, name, derived_name, work, sweep_out, variants):
    """benchmarks/run.py's arguments for the derived dataset: the same budget options and checkpoints, the
    source dataset's yaml (properties/dataset/<name>.yaml, found by name in normal runs) before the user's
    files."""
    dataset_yaml = os.path.join(properties_dir(), "dataset", f"{name}.yaml")
    config_files = ([dataset_yaml] if os.path.isfile(dataset_yaml) else []) + args.config_files
    argv = ["--dataset", derived_name, "--data_path", os.path.join(work, "data"), "--models", *variants,
            "--seeds", *map(str, args.seeds), "--out", sweep_out, "--work", work]
    if config_files:
        argv += ["--config-files", *config_files]
    if getattr(args, "pretrained", None):
        argv += ["--pretrained", *args.pretrained]
    options = {"--epochs": args.epochs, "--stopping-step": args.stopping_step, "--threads": args.threads}
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    for pair in args.overrides:
        argv += ["--set", pair]
    return argv + (["--quick"] if args.quick else []) + (["--no-plot"] if args.no_plot else [])


def evaluate_new_item_run(record, data_path, new_tokens, cases, targets, work):
    """Metrics of one trained run on every case set after the new items joined it."""
    clock = perf_counter()
    if record["model"] == "SASRec":
        top, note = sasrec_top_k(record["checkpoint"], data_path, new_tokens, cases, K, record["seed"]), None
    else:
        top, note = plugin_top_k(record["checkpoint"], data_path, new_tokens, cases, K, os.path.join(work, "tmp"))
    result = {name: metrics_at_k(ranks_in_top_k(top[name], targets[name], K)) for name in cases}
    result.update({"note": note, "seconds": perf_counter() - clock,
                   "recbole_test_ndcg@10": record["test"]["ndcg@10"]})
    return result


def random_expectation(items):
    """HIT/NDCG@10 of a uniformly random ranking of ``items`` candidates."""
    return {"hit@10": K / items, "ndcg@10": sum(1 / math.log2(rank + 2) for rank in range(K)) / items}


def new_items_table(report):
    """Markdown rows: the random ranking, then mean ± std over seeds of every variant."""
    chance, case_names = report["random"], list(CASES.values())
    lines = [f"| model | seeds | {case_names[0]}: HIT@10 | NDCG@10 | {case_names[1]}: HIT@10 | NDCG@10 | RecBole test "
             f"NDCG@10 (warm rows, trained items only) |", "|---" * 7 + "|",
             "| random ranking | | " + f"{chance['hit@10']:.4f} | {chance['ndcg@10']:.4f} | " * 2 + " |"]
    for variant, row in report["table"].items():
        seed_count = len(report["per_run"][variant])
        cells = [cell(row[case][metric], seed_count) for case in CASES for metric in ("hit@10", "ndcg@10")]
        recbole = mean(result["recbole_test_ndcg@10"] for result in report["per_run"][variant])
        seeds = ", ".join(map(str, report["seeds"][variant]))
        lines.append(f"| {variant} | {seeds} | " + " | ".join(cells) + f" | {recbole:.4f} |")
    return "\n".join(lines)


def new_items_markdown(name, report):
    split, counts = report["split"], report["split"]["counts"]
    rows = counts["rows"]
    trained_rows = ", ".join(f"{part} {rows[part]['derived']} of {rows[part]['source']} rows" for part in PARTS)
    lost = f" (and the {counts['vanished']} the derived files lost)" if counts["vanished"] else ""
    setting = (
        f"{counts['held_out']} of {counts['items']} items held out (share {split['holdout']}, split seed "
        f"{split['split_seed']}); trained on the other {counts['trained_items']}: {trained_rows}. Ranked against all "
        f"{counts['items']} items once the held-out ones{lost} were added: {counts['new_item_rows']} test rows with a "
        f"held-out target ({counts['new_item_rows_with_held_out_history']} of their histories hold held-out items "
        f"too) and the {rows['test']['derived']} warm test rows of the derived data. HIT/NDCG@10 of the top 10, "
        f"nothing excluded; mean ± std over seeds."
    )
    notes = [f"- {variant}: {note}" for variant, note in report["notes"].items()]
    notes.append("- SASRec: untrained ID rows, N(0, initializer_range) as SASRec initialises them (seeded by the "
                 "run's seed): the floor.")
    machine = report["machine"]
    budgets = "; ".join(json.dumps(budget) for budget in report["budgets"])
    return (f"# {name}: new items (cold-start protocol b)\n\n{setting}\n\n{new_items_table(report)}\n\n"
            f"How new items were added:\n\n" + "\n".join(notes) + f"\n\nCommand: `{report['command']}`\n\n"
            f"Machine: {machine['cpu']}, {machine['cores']} cores, {report['threads'] or 'default'} thread(s); "
            f"budget: {budgets}\n")


def plot_new_items(report, path, title):
    table = report["table"]
    series = {label: [table[variant][case]["ndcg@10"] for variant in table] for case, label in CASES.items()}
    bar_chart(path, title, list(table), series, reference=("random ranking", report["random"]["ndcg@10"]))


def prepare_split(args, source, name, sweep_out, work):
    """The split of ``--holdout`` / ``--split-seed`` (checked against the sweep's earlier one) and the derived
    dataset written to <work>/data/<name>-new. Returns (source benchmark files, split record)."""
    parts = read_parts(source, name)
    split, rows = make_split(parts, args.holdout, args.split_seed)
    split = dict(source=source, holdout=args.holdout, split_seed=args.split_seed, **split)
    if not split["counts"]["new_item_rows"]:
        raise SystemExit(f"no test row of {name} has a held-out target ({split['counts']}): choose another "
                         f"--split-seed or a larger --holdout")
    os.makedirs(sweep_out, exist_ok=True)
    settle_split(os.path.join(sweep_out, "split.json"), split)
    write_derived(source, name, os.path.join(work, "data", f"{name}-new"), parts, rows)
    print(f"{name}: {split['counts']}", flush=True)
    return parts, split


def evaluate_new_item_runs(variants, seeds, sweep_out, work, split, cases, targets):
    """{variant: [result of every seed with a finished run]}, the seeds and the budgets of those runs."""
    per_run, found, budgets = {}, {}, set()
    for variant in variants:
        for seed in seeds:
            path = os.path.join(sweep_out, "runs", sweep_harness.run_id(variant, seed) + ".json")
            record = sweep_harness.finished(path)
            if record is None or not record.get("checkpoint"):
                print(f"{variant} seed {seed}: no finished run with a checkpoint, left out", flush=True)
                continue
            result = evaluate_new_item_run(record, os.path.join(work, "data"), split["held_out"] + split["vanished"],
                                           cases, targets, work)
            per_run.setdefault(variant, []).append(result)
            found.setdefault(variant, []).append(seed)
            budgets.add(json.dumps(record["budget"], sort_keys=True))
            print(f"{variant} seed {seed}: new-item NDCG@10 {result['new']['ndcg@10']:.4f}, warm "
                  f"{result['warm']['ndcg@10']:.4f} ({result['seconds']:.0f}s)", flush=True)
    if not per_run:
        raise SystemExit(f"no finished run to evaluate in {sweep_out}/runs")
    return per_run, found, [json.loads(budget) for budget in sorted(budgets)]


def few_user_rows(parts, share, seed):
    """Protocol (c): ({part: rows}, counts) keeping the training rows of a seeded random ``share`` of the users
    with any (all of a chosen user's prefix rows), validation and test rows untouched."""
    train = parts["train"]
    if train.user is None:
        raise SystemExit(f"the few-users protocol needs the user_id:token column of the train file; its header "
                         f"is {train.header}")
    users = {row[train.user] for row in train.rows}
    chosen = set(choose_share(users, share, seed))
    rows = {part: split.rows for part, split in parts.items()}
    rows["train"] = [row for row in train.rows if row[train.user] in chosen]
    counts = {"users": len(users), "kept_users": len(chosen), "rows": row_counts(parts, rows)}
    return rows, counts


def run_few_users(args):
    if not 0 < args.share < 1:
        raise SystemExit(f"--share takes a share of the users in (0, 1), got {args.share}")
    source, name = sweep_harness.resolve_dataset(args)
    derived_name = f"{name}-users{100 * args.share:g}"
    sweep_out = os.path.abspath(args.out or os.path.join(HERE, "results", derived_name))
    work = os.path.abspath(args.work or os.path.join(HERE, "work", derived_name))
    parts = read_parts(source, name)
    rows, counts = few_user_rows(parts, args.share, args.split_seed)
    os.makedirs(sweep_out, exist_ok=True)
    record = dict(source=source, share=args.share, split_seed=args.split_seed, counts=counts)
    settle_split(os.path.join(sweep_out, "split.json"), record, keys=("share", "split_seed", "counts"))
    write_derived(source, name, os.path.join(work, "data", derived_name), parts, rows)
    print(f"{derived_name}: {counts}", flush=True)
    sweep_harness.main(sweep_argv(args, name, derived_name, work, sweep_out, args.models))


def run_new_items(args):
    source, name = sweep_harness.resolve_dataset(args)
    derived_name = f"{name}-new"
    variants = new_item_variants(args.models)
    out = os.path.abspath(args.out or os.path.join(HERE, "results", name))
    sweep_out = os.path.abspath(args.sweep_out or os.path.join(HERE, "results", derived_name))
    work = os.path.abspath(args.work or os.path.join(HERE, "work", derived_name))
    parts, split = prepare_split(args, source, name, sweep_out, work)
    if args.split_only:
        return
    sweep_harness.main(sweep_argv(args, name, derived_name, work, sweep_out, variants))

    held = set(split["held_out"])
    derived_test = read_parts(os.path.join(work, "data", derived_name), derived_name)["test"]
    cases, targets = {}, {}
    cases["new"], targets["new"] = cases_of(parts["test"], lambda target: target in held)
    cases["warm"], targets["warm"] = cases_of(derived_test, lambda target: True)
    if args.threads:
        torch.set_num_threads(args.threads)
    per_run, seeds, budgets = evaluate_new_item_runs(variants, args.seeds, sweep_out, work, split, cases, targets)
    report = {
        "dataset": name, "command": "python benchmarks/coldstart.py " + shlex.join(args.argv),
        "machine": sweep_harness.machine(), "threads": args.threads, "split": split, "budgets": budgets,
        "random": random_expectation(split["counts"]["items"]), "seeds": seeds,
        "notes": {variant: results[0]["note"] for variant, results in per_run.items() if results[0]["note"]},
        "per_run": per_run, "table": aggregate(per_run),
    }
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "coldstart_new_items.json"), report, indent=1)
    text = new_items_markdown(name, report)
    with atomic_open(os.path.join(out, "coldstart_new_items.md"), "w") as handle:
        handle.write(text)
    if not args.no_plot:
        plot_new_items(report, os.path.join(out, "coldstart_new_items.png"), f"{name}: NDCG@10 on new and warm items")
    print(text)


def file_training_counts(train):
    """{item token: training interactions} of a benchmark train file, by ``training_counts``' rule (each
    row's target, plus the history of each one-item row); read from the file, so no model or RecBole
    dataset is needed to describe a split."""
    counts = {}
    for row in train.rows:
        history, target = train.items(row)
        for item in (history if len(history) == 1 else []) + [target]:
            counts[item] = counts.get(item, 0) + 1
    return counts


def target_mix(split, counts):
    """{bucket: share of the file's rows whose target has that many training interactions}."""
    popularity = torch.tensor([counts.get(split.items(row)[1], 0) for row in split.rows])
    mix = {}
    for low, high in BUCKETS:
        chosen = in_bucket(popularity, low, high)
        mix[bucket_name(low, high)] = chosen.float().mean().item()
    return mix


def at_mix(result, mix):
    """NDCG@10 of one run's bucket ``result`` had its targets followed ``mix``: the per-bucket scores weighted
    by the mix's shares (buckets without test rows left out, the remaining shares renormalised)."""
    scored = [bucket for bucket in mix if "ndcg@10" in result[bucket]]
    weight = sum(mix[bucket] for bucket in scored)
    return sum(mix[bucket] * result[bucket]["ndcg@10"] for bucket in scored) / weight


def best_valid_ndcg(record):
    """A run's best validation score when it is NDCG@10 (the plugin's default valid_metric), else None."""
    if record is None or str(record["config"].get("valid_metric", "NDCG@10")).lower() != "ndcg@10":
        return None
    return record["best_valid_score"]


def gap_rows(folder, mix):
    """Per variant of a ``buckets``-scored results folder: runs, best valid NDCG@10, test NDCG@10 and test
    NDCG@10 at ``mix``, means over the scored runs whose record gives the valid score (over every scored run,
    valid left empty, when none does), so the gap compares the same runs."""
    path = os.path.join(folder, "coldstart_buckets.json")
    fix = f"run `python benchmarks/coldstart.py buckets --results {folder}` first"
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist: {fix}")
    per_run = read_own_json(path, lambda data: data["per_run"], "a coldstart_buckets.json written by this script", fix)
    records = records_by_variant(record for record in load_runs(folder) if record.get("status") == "ok")
    rows = []
    for variant, results in per_run.items():
        paired = [(result, best_valid_ndcg(run_record_of(result, records.get(variant, {})))) for result in results]
        paired = [(result, valid) for result, valid in paired if valid is not None]
        valid = [valid for _, valid in paired]
        results = [result for result, _ in paired] or results
        rows.append({"results": os.path.basename(os.path.normpath(folder)), "variant": variant, "runs": len(results),
                     "valid": mean(valid) if valid else None,
                     "test": mean(result["all"]["ndcg@10"] for result in results),
                     "test_at_valid_mix": mean(at_mix(result, mix) for result in results)})
    return rows


def targets_markdown(name, mixes, rows):
    buckets = [bucket_name(low, high) for low, high in BUCKETS]
    lines = [f"# {name}: how cold the validation and test targets are", "",
             "Share of each file's targets by the target's training interactions.", "",
             "| targets | " + " | ".join(buckets) + " |", "|---" * (len(buckets) + 1) + "|"]
    lines += [f"| {part} | " + " | ".join(f"{mix[b]:.4f}" for b in buckets) + " |" for part, mix in mixes.items()]
    if rows:
        lines += ["", "Test NDCG@10 re-weighted to the validation targets' mix (means over the scored runs).", "",
                  "| results | variant | runs | best valid | test | test at valid's mix | gap explained |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            valid = "-" if row["valid"] is None else f"{row['valid']:.4f}"
            explained = ("-" if row["valid"] is None or row["valid"] <= row["test"] else
                         f"{(row['test_at_valid_mix'] - row['test']) / (row['valid'] - row['test']):.0%}")
            lines.append(f"| {row['results']} | {row['variant']} | {row['runs']} | {valid} | {row['test']:.4f} | "
                         f"{row['test_at_valid_mix']:.4f} | {explained} |")
    return "\n".join(lines) + "\n"


def run_targets(args):
    source, name = sweep_harness.resolve_dataset(args)
    parts = read_parts(source, name)
    counts = file_training_counts(parts["train"])
    mixes = {part: target_mix(parts[part], counts) for part in ("valid", "test")}
    rows = [row for folder in args.results for row in gap_rows(folder, mixes["valid"])]
    out = os.path.abspath(args.out or os.path.join(HERE, "results", name))
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "target_popularity.json"),
                      {"dataset": name, "command": "python benchmarks/coldstart.py " + shlex.join(args.argv),
                       "mix": mixes, "rows": rows}, indent=1)
    text = targets_markdown(name, mixes, rows)
    with atomic_open(os.path.join(out, "target_popularity.md"), "w") as handle:
        handle.write(text)
    print(text)


def add_sweep_options(parser, models):
    """The options a derived-dataset protocol passes on to benchmarks/run.py."""
    parser.add_argument("--dataset", required=True, help="dataset name (with --data_path) or a dataset folder")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/")
    parser.add_argument("--models", nargs="+", default=models, help="variants, as run.py")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split's draw (not of training)")
    parser.add_argument("--epochs", type=int, default=None, help="as run.py: cap on training epochs")
    parser.add_argument("--stopping-step", type=int, default=None, help="as run.py: early-stopping patience")
    parser.add_argument("--quick", action="store_true", help="as run.py: one epoch per run, for smoke tests")
    parser.add_argument("--config-files", nargs="*", default=[], help="as run.py: extra yaml files for every run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="as run.py: a setting for every run")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run and of the ranking")
    parser.add_argument("--no-plot", action="store_true", help="no plots (no matplotlib needed)")


def add_new_items_parser(commands):
    parser = commands.add_parser("new-items", help="protocol (b): items held out of training, added afterwards")
    add_sweep_options(parser, NEW_ITEM_MODELS)
    parser.add_argument("--holdout", type=float, default=0.1, help="share of the items held out")
    parser.add_argument("--out", default=None,
                        help="where coldstart_new_items.* go (default benchmarks/results/<dataset>)")
    parser.add_argument("--sweep-out", default=None,
                        help="the training runs' records and split.json (default benchmarks/results/<dataset>-new)")
    parser.add_argument("--work", default=None,
                        help="derived data, logs, checkpoints (default benchmarks/work/<dataset>-new)")
    parser.add_argument("--split-only", action="store_true",
                        help="write the split and the derived data, train nothing")
    parser.set_defaults(run=run_new_items)


def add_few_users_parser(commands):
    parser = commands.add_parser("few-users", help="protocol (c): a share of the users' training rows")
    add_sweep_options(parser, FEW_USER_MODELS)
    parser.add_argument("--share", type=float, default=0.1, help="share of the users whose training rows are kept")
    parser.add_argument("--pretrained", nargs="+", default=[], metavar="[MODEL=]PATH",
                        help="as run.py: pre-training checkpoints, adding the +pretrained twins")
    parser.add_argument("--out", default=None,
                        help="the runs' records, table.md, split.json (default benchmarks/results/<dataset>-users<percent>)")
    parser.add_argument("--work", default=None,
                        help="derived data, logs, checkpoints (default benchmarks/work/<dataset>-users<percent>)")
    parser.set_defaults(run=run_few_users)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    buckets = commands.add_parser("buckets", help="accuracy per popularity bucket of finished sweep runs")
    buckets.add_argument("--results", required=True, help="a benchmarks/run.py output folder (with runs/)")
    buckets.add_argument("--models", nargs="*", help="variants to include (default: all finished)")
    buckets.add_argument("--seeds", nargs="*", type=int, help="seeds to include (default: all finished)")
    buckets.add_argument("--data_path", help="where the runs' data lives now (default: as recorded)")
    buckets.add_argument("--split", choices=("test", "valid"), default="test",
                         help="whose rows are ranked (valid: written to coldstart_buckets_valid.*)")
    add_moved_option(buckets)
    buckets.set_defaults(run=run_buckets)
    add_new_items_parser(commands)
    add_few_users_parser(commands)
    targets = commands.add_parser("targets", help="how cold the validation and test targets are")
    targets.add_argument("--dataset", required=True, help="dataset name (with --data_path) or a dataset folder")
    targets.add_argument("--data_path", default=None, help="folder holding <dataset>/")
    targets.add_argument("--results", nargs="*", default=[], help="buckets-scored run.py output folders")
    targets.add_argument("--out", default=None, help="where target_popularity.* go (default benchmarks/results/<dataset>)")
    targets.set_defaults(run=run_targets)
    args = parser.parse_args(argv)
    args.argv = argv
    args.run(args)


if __name__ == "__main__":
    main()
