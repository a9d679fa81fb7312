"""How much of a trained (or untrained) sequential model's ranking is its last history item.

    python benchmarks/history_probe.py --out benchmarks/results/Scientific-history-probe \\
        --rows "random model=benchmarks/results/Scientific-users10-untrained" \\
               "pre-trained, no fine-tuning=benchmarks/results/Scientific-users10-zeroshot"

Why: MISSRec with random weights and no training ranks Scientific's test users above the pre-trained model
with no target training, and a ranking by the last history item's feature cosine alone, with no model
(``similarity_baseline.py``), is level with the random model. The guess to test: a random network passes the
last item's features through, so it ranks like that baseline, while a trained one mixes the history in. Each
finished run's checkpoint is reloaded (``coldstart.reload_run``) and its test rows are ranked twice against
all items, with the full history and with the history cut to its last item. Per run:

- ``ndcg@10``: the full history (the run's own test figure, a cross-check);
- ``ndcg@10, last item only``: the history cut to its last item;
- ``ndcg@10, history excluded``: the full history, every history item ranked last (what a filter of
  already-seen items would give: a target that repeats a history item is then missed);
- ``overlap@10``: the share of the full-history top 10 that the last-item-only top 10 holds;
- ``echo@1`` and ``echo@10``: how often the last history item itself is ranked first / in the top 10 with
  the full history (the similarity baseline: always first; a target is rarely a repeat of the last item).

Ties count as a random order, as in ``coldstart.target_ranks``. Model-agnostic (any model with
``full_sort_predict``). Rows are ``LABEL=FOLDER[:VARIANT]`` as in ``compare.py``; mean ± std over each row's
runs whose checkpoint still exists (the others are named and skipped); ``--moved OLD=NEW`` names a work folder
moved or renamed whole since its runs. Writes <out>/history_probe.json and .md.
"""
import argparse
import os

import torch
from recbole.data.interaction import Interaction

from compare import parse_row, row_runs
from coldstart import K, ranks_among_scores, reload_run, row_metrics_at_k
from report import add_moved_option, mean_std, moved_folders, relocated, write_results

FIGURES = ("ndcg@10", "ndcg@10, last item only", "ndcg@10, history excluded", "overlap@10", "echo@1", "echo@10")


def last_item_only(interaction, seq_field, length_field):
    """(the rows with each history cut to its last item, that item [B])."""
    seq, length = interaction[seq_field], interaction[length_field]  # [B, L], [B]
    last = seq.gather(1, (length - 1).unsqueeze(1))  # [B, 1]
    cut = torch.zeros_like(seq)
    cut[:, :1] = last
    rows = Interaction({**interaction.interaction, seq_field: cut, length_field: torch.ones_like(length)})
    return rows, last.squeeze(1)


def all_item_scores(model, interaction, rows):
    """[B, N] scores of every item, padding never ranked."""
    scores = model.full_sort_predict(interaction).view(rows, -1)
    scores[:, 0] = float("-inf")
    return scores


def top_overlap(first, second, k=K):
    """Per row, the share of ``first``'s top k that ``second``'s top k holds."""
    top_first, top_second = first.topk(k, dim=1).indices, second.topk(k, dim=1).indices  # [B, k] each
    return (top_first.unsqueeze(2) == top_second.unsqueeze(1)).any(2).float().mean(1)


@torch.no_grad()
def probe_rows(model, test_data, device):
    """{figure: per-row values [N]} of ``FIGURES`` over ``test_data`` (full-sort batches)."""
    per_batch = {name: [] for name in FIGURES}
    for interaction, _, _, positive in test_data:
        interaction, positive = interaction.to(device), positive.to(device)
        cut, last = last_item_only(interaction, model.ITEM_SEQ, model.ITEM_SEQ_LEN)
        full = all_item_scores(model, interaction, len(positive))
        short = all_item_scores(model, cut, len(positive))
        echo_above, echo_tied = ranks_among_scores(full, last)
        figures = {
            "ndcg@10": row_metrics_at_k(*ranks_among_scores(full, positive))[1],
            "ndcg@10, last item only": row_metrics_at_k(*ranks_among_scores(short, positive))[1],
            "ndcg@10, history excluded": row_metrics_at_k(*ranks_among_scores(
                full.scatter(1, interaction[model.ITEM_SEQ], float("-inf")), positive))[1],
            "overlap@10": top_overlap(full, short),
            "echo@1": (echo_above == 0).float() / (echo_tied + 1).float(),
            "echo@10": row_metrics_at_k(echo_above, echo_tied)[0],
        }
        for name, values in figures.items():
            per_batch[name].append(values.cpu())
    return {name: torch.cat(values) for name, values in per_batch.items()}


def probe_run(record, data_path):
    """{figure: mean over the test rows} of one finished run's checkpoint."""
    config, model, _, _, test_data = reload_run(record, data_path)
    rows = probe_rows(model, test_data, config["device"])
    return {name: round(values.mean().item(), 4) for name, values in rows.items()}


def markdown(rows):
    lines = ["| row | seeds | " + " | ".join(FIGURES) + " |", "|---" * (len(FIGURES) + 2) + "|"]
    for row in rows:
        cells = [mean_std([run[name] for run in row["runs"]]) for name in FIGURES]
        lines.append(f"| {row['label']} | {', '.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", required=True, metavar="LABEL=FOLDER[:VARIANT]")
    parser.add_argument("--data_path", help="folder holding the runs' datasets (default: each run's own)")
    parser.add_argument("--out", required=True)
    add_moved_option(parser)
    args = parser.parse_args(argv)
    moves = moved_folders(args.moved)
    rows = []
    for label, folder, variant in map(parse_row, args.rows):
        variant, runs = row_runs(folder, variant)
        runs = [relocated(record, moves) for record in runs]
        gone = [record["seed"] for record in runs if not os.path.exists(record.get("checkpoint") or "")]
        runs = [record for record in runs if record["seed"] not in gone]
        if not runs:
            raise SystemExit(f"{label}: every checkpoint of {folder} is gone: rerun its runs with benchmarks/run.py "
                             "(the same --work folder resumes them), or name their work folder's new place with "
                             "--moved OLD=NEW")
        if gone:
            print(f"{label}: seeds {gone} skipped, their checkpoints are gone", flush=True)
        probed = []
        for record in runs:
            probed.append(probe_run(record, args.data_path or record["config"]["data_path"]))
            print(f"{label} seed {record['seed']}: {probed[-1]} (run's own test NDCG@10 "
                  f"{record['test']['ndcg@10']:.4f})", flush=True)
        rows.append({"label": label, "folder": folder, "variant": variant,
                     "seeds": [record["seed"] for record in runs], "runs": probed})
    write_results(args.out, "history_probe", {"rows": rows}, markdown(rows))


if __name__ == "__main__":
    main()
