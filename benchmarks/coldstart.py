"""Where content helps: accuracy on rare and unseen items.

    python benchmarks/coldstart.py buckets --results benchmarks/results/Scientific

``buckets`` (protocol a): every finished run of a ``benchmarks/run.py`` sweep is reloaded from its
checkpoint (``load_data_and_model``), its test rows are ranked against all items, and HIT/NDCG@10 are
reported per popularity bucket of the test target: how often the item occurs in the training
interactions (as a target or in a history): 0, 1-4, 5-9, 10-19, >= 20. Mean ± std over the seeds of each
variant, the bucket sizes, a plot. Writes <results>/coldstart_buckets.json, .md and .png.

The published papers claim gains on cold-start and long-tail items without a protocol; this is ours.
"""
import argparse
import glob
import json
import math
import os
import sys
from statistics import mean, stdev

import torch

from recbole_missrec.atomic import atomic_open, atomic_write_json

BUCKETS = ((0, 0), (1, 4), (5, 9), (10, 19), (20, None))
K = 10


def bucket_name(low, high):
    return f"{low}" if low == high else (f">={low}" if high is None else f"{low}-{high}")


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
    """(0-based rank of every test row's target among all items, target ids), padding never ranked."""
    ranks, targets = [], []
    for interaction, _, _, positive in test_data:
        scores = model.full_sort_predict(interaction.to(device)).view(len(positive), -1)
        scores[:, 0] = float("-inf")
        target = scores.gather(1, positive.to(device).unsqueeze(1))
        ranks.append((scores > target).sum(1).cpu())
        targets.append(positive)
    return torch.cat(ranks), torch.cat(targets)


def metrics_at_k(ranks):
    hit = (ranks < K).float()
    ndcg = hit / torch.log2(ranks.float() + 2)
    return {"hit@10": hit.mean().item(), "ndcg@10": ndcg.mean().item(), "rows": int(ranks.numel())}


def bucket_metrics(ranks, counts):
    """{bucket: metrics of the rows whose target falls in it} plus "all"."""
    out = {"all": metrics_at_k(ranks)}
    for low, high in BUCKETS:
        chosen = (counts >= low) & ((counts <= high) if high is not None else torch.ones_like(counts, dtype=torch.bool))
        out[bucket_name(low, high)] = metrics_at_k(ranks[chosen]) if chosen.any() else {"rows": 0}
    return out


def evaluate_run(record, data_path):
    """Bucket metrics of one finished run (its checkpoint reloaded)."""
    from recbole_missrec.quick_start import load_data_and_model

    config, model, dataset, train_data, _, test_data = load_data_and_model(
        record["checkpoint"], data_path=data_path, config_dict={"show_progress": False, "state": "WARNING"})
    counts = training_counts(train_data.dataset, dataset.item_num)
    ranks, targets = target_ranks(model, test_data, config["device"])
    result = bucket_metrics(ranks, counts[targets])
    result["recbole_test_ndcg@10"] = record["test"]["ndcg@10"]  # the sweep's own figure, for a cross-check
    return result


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


def markdown(table, metric):
    buckets = ["all"] + [bucket_name(low, high) for low, high in BUCKETS]
    variants = list(table)
    sizes = table[variants[0]]
    lines = ["| target's training interactions | " + " | ".join(buckets) + " |", "|---" * (len(buckets) + 1) + "|",
             "| test rows | " + " | ".join(str(sizes[b]["rows"]) for b in buckets) + " |"]
    for variant in variants:
        cells = []
        for bucket in buckets:
            value = table[variant][bucket].get(metric)
            cells.append(f"{value[0]:.4f} ± {value[1]:.4f}" if value else "-")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table, path, title):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from report import pyplot

    plt = pyplot()
    buckets = [bucket_name(low, high) for low, high in BUCKETS]
    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(table)
    for index, (variant, row) in enumerate(table.items()):
        values = [row[b].get("ndcg@10", (math.nan, 0.0)) for b in buckets]
        axis.bar([i + index * width for i in range(len(buckets))], [v[0] for v in values], width,
                 yerr=[v[1] for v in values], capsize=3, label=variant)
    axis.set_xticks([i + width * (len(table) - 1) / 2 for i in range(len(buckets))], buckets)
    axis.set_xlabel("training interactions of the test target")
    axis.set_ylabel("test NDCG@10 (mean ± std over seeds)")
    axis.set_title(title)
    axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def run_buckets(args):
    records = []
    for path in sorted(glob.glob(os.path.join(args.results, "runs", "*.json"))):
        with open(path) as handle:
            record = json.load(handle)
        if record.get("status") == "ok" and record.get("checkpoint") and (not args.models or record["variant"] in args.models):
            records.append(record)
    if not records:
        raise SystemExit(f"no finished run with a checkpoint in {args.results}/runs (re-run benchmarks/run.py)")
    per_run = {}
    for record in records:
        result = evaluate_run(record, args.data_path or record["config"]["data_path"])
        per_run.setdefault(record["variant"], []).append(result)
        print(f"{record['variant']} seed {record['seed']}: NDCG@10 {result['all']['ndcg@10']:.4f} "
              f"(sweep: {result['recbole_test_ndcg@10']:.4f})", flush=True)
    table = aggregate(per_run)
    name = os.path.basename(os.path.normpath(args.results))
    atomic_write_json(os.path.join(args.results, "coldstart_buckets.json"), {"per_run": per_run, "table": table}, indent=1)
    text = (f"# {name}: test accuracy by the target's training interactions\n\nNDCG@10\n\n{markdown(table, 'ndcg@10')}\n\n"
            f"HIT@10\n\n{markdown(table, 'hit@10')}\n")
    with atomic_open(os.path.join(args.results, "coldstart_buckets.md"), "w") as handle:
        handle.write(text)
    plot(table, os.path.join(args.results, "coldstart_buckets.png"), f"{name}: NDCG@10 by target popularity")
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    buckets = commands.add_parser("buckets", help="accuracy per popularity bucket of finished sweep runs")
    buckets.add_argument("--results", required=True, help="a benchmarks/run.py output folder (with runs/)")
    buckets.add_argument("--models", nargs="*", help="variants to include (default: all finished)")
    buckets.add_argument("--data_path", help="where the runs' data lives now (default: as recorded)")
    buckets.set_defaults(run=run_buckets)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
