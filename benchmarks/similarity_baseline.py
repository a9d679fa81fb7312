"""A ranking with no model at all: every item scored by the cosine of its features with the row's history.

    python benchmarks/similarity_baseline.py --dataset Scientific --data_path data \\
        --out benchmarks/results/Scientific-similarity

Why: MISSRec with random weights and no training ranks Scientific's test users at NDCG@10 0.0489, above the
pre-trained model with no target training (README, "Few users"). This measures how much of that the item
features give by themselves, with no network: the query is the last history item's feature vector, or the
mean of the history's. RecBole has no such baseline (its feature-free models all learn IDs).

Reads ``<dataset>.<split>.inter`` (the UniSRec layout: item tokens are feature rows) and the feature file
``<dataset>.<suffix>`` (float32 rows of ``--dim``). Every item is ranked, as the benchmarks' full ranking does
(history items included); a target's rank among items of equal score is taken in expectation
(``coldstart.row_metrics_at_k``), since items with identical text have identical features. Writes
<out>/results.json and results.md.
"""
import argparse
import os

import torch

from coldstart import ranks_among_scores, row_metrics_at_k
from dataset_preprocess.layout import read_benchmark
from recbole_missrec.atomic import atomic_open, atomic_write_json
from recbole_missrec.data.feature_file import read_feature_file

QUERIES = {
    "last item": lambda features, history: features[history[-1]],
    "mean of the history": lambda features, history: features[history].mean(0),
}


def read_rows(path):
    """(histories: list of token lists, targets [N]) of a benchmark-layout .inter file."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: pass the folder holding <dataset>/ as --data_path")
    rows = list(read_benchmark(path))
    return [history for _, history, _ in rows], torch.tensor([target for _, _, target in rows])


def target_ranks(queries, features, targets, batch=2048):
    """Per row, (items scored above the target, other items scored as the target), both [N]."""
    ranks = [ranks_among_scores(queries[start:start + batch] @ features.T, targets[start:start + batch])
             for start in range(0, len(targets), batch)]  # scores [b, N items] per batch
    return torch.cat([above for above, _ in ranks]), torch.cat([tied for _, tied in ranks])


def evaluate(features, histories, targets):
    """{query name: {"hit@10", "ndcg@10"}} of each way of building the query."""
    unit = torch.nn.functional.normalize(features, dim=-1)
    results = {}
    for name, query in QUERIES.items():
        queries = torch.nn.functional.normalize(torch.stack([query(unit, h) for h in histories]), dim=-1)
        hit, ndcg = row_metrics_at_k(*target_ranks(queries, unit, targets))
        results[name] = {"hit@10": round(hit.mean().item(), 4), "ndcg@10": round(ndcg.mean().item(), 4)}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", required=True, help="folder holding <dataset>/")
    parser.add_argument("--split", default="test", choices=("test", "valid"))
    parser.add_argument("--suffix", default="feat1CLS", help="feature file suffix (default feat1CLS: text)")
    parser.add_argument("--dim", type=int, default=384, help="feature dimension (default 384)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    folder = os.path.join(args.data_path, args.dataset)
    histories, targets = read_rows(os.path.join(folder, f"{args.dataset}.{args.split}.inter"))
    features = torch.from_numpy(read_feature_file(os.path.join(folder, f"{args.dataset}.{args.suffix}"), args.dim))
    results = evaluate(features, histories, targets)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "results.json"), {
        "dataset": args.dataset, "split": args.split, "features": args.suffix, "rows": len(targets),
        "items": features.shape[0], "results": results})
    lines = [f"{args.dataset}, {args.split} rows ({len(targets)}), features `{args.suffix}`, every item ranked, no training:",
             "", "| query | HIT@10 | NDCG@10 |", "|---|---|---|"]
    lines += [f"| {name} | {r['hit@10']:.4f} | {r['ndcg@10']:.4f} |" for name, r in results.items()]
    with atomic_open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
