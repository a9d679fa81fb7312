"""Where one MISSRec training step spends its time, at a few history lengths.

    OMP_NUM_THREADS=1 python benchmarks/step_profile.py --dataset Scientific_mm_subset --data_path ../shared/data

One batch of real training rows (``--batch`` rows whose histories are at least the longest measured length,
cut to each length from their most recent items), one full step each: forward (interest encoding, decoder,
scores against all items, loss), backward, Adam. Every part is timed as CPU seconds of this process (the
best of ``--repeats``), and torch's profiler gives the operators that cost most at the shortest length.
Interest discovery runs once, before, as at the start of an epoch. Width and model settings are the model's
defaults unless ``--set KEY=VALUE`` changes them. Writes <out>/step_profile.json and .md.
"""
import argparse
import json
import os
import sys

import torch
import yaml
from recbole.data.interaction import Interaction

from recbole_missrec.atomic import atomic_open, atomic_write_json
from recbole_missrec.quick_start import prepare_run
from recbole_missrec.utils import create_dataset
from single_run import cpu_seconds

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(function, repeats):
    """(best CPU seconds of ``repeats`` calls, last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = cpu_seconds()
        result = function()
        best = min(best, cpu_seconds() - start)
    return best, result


def batch_at_length(rows, length, model):
    """The rows' histories cut to their last ``length`` items (RecBole keeps histories left-aligned and
    right-padded; a shorter history stays whole, padded to ``length``)."""
    seq, seq_len = rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN]
    seq = torch.nn.functional.pad(seq, (0, max(0, length - seq.shape[1])))  # the files' longest may be shorter
    start = (seq_len - length).clamp_min(0)
    positions = start[:, None] + torch.arange(length)[None, :]  # [B, length]
    return Interaction({model.ITEM_SEQ: seq.gather(1, positions), model.ITEM_SEQ_LEN: seq_len.clamp(max=length),
                        model.POS_ITEM_ID: rows[model.POS_ITEM_ID]})


def measure(model, optimizer, interaction, repeats):
    """CPU seconds of the step's parts on one batch."""
    def forward():
        return model.calculate_loss(interaction)

    def step():
        optimizer.zero_grad()
        loss = model.calculate_loss(interaction)
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        candidates, _ = timed(lambda: model.candidate_tokens(torch.arange(model.n_items)), repeats)
        encode, _ = timed(lambda: model.encode(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]), repeats)
    forward_s, _ = timed(forward, repeats)
    step_s, _ = timed(step, repeats)
    return {"candidate tokens (no grad)": candidates, "sequence encoding (no grad)": encode,
            "forward with loss": forward_s, "whole step (forward, backward, Adam)": step_s}


def top_operators(model, optimizer, interaction, count=12):
    optimizer.zero_grad()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        model.calculate_loss(interaction).backward()
        optimizer.step()
    events = sorted(profiler.key_averages(), key=lambda event: -event.self_cpu_time_total)[:count]
    total = sum(event.self_cpu_time_total for event in profiler.key_averages())
    return [{"operator": event.key, "self CPU ms": event.self_cpu_time_total / 1e3, "calls": event.count,
             "share": event.self_cpu_time_total / total} for event in events]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="Scientific_mm_subset")
    parser.add_argument("--data_path", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data"))
    parser.add_argument("--lengths", nargs="+", type=int, default=[5, 10, 50])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config-files", nargs="*", default=[], help="extra yaml files, as run.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read this script's arguments as settings
    config_dict = {"data_path": args.data_path, "show_progress": False, "state": "WARNING",
                   "train_batch_size": args.batch, "MAX_ITEM_LIST_LENGTH": max(args.lengths)}
    for item in args.overrides:
        key, _, value = item.partition("=")
        config_dict[key] = yaml.safe_load(value)
    config, _ = prepare_run("MISSRec", args.dataset, args.config_files, config_dict)
    dataset = create_dataset(config)
    train, _, _ = dataset.build()
    model = config.model_class(config, train).to(config["device"])
    model.discover_interests(torch.Generator().manual_seed(0))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    feat = train.inter_feat
    order = torch.argsort(feat[model.ITEM_SEQ_LEN], descending=True, stable=True)[:args.batch]
    rows = feat[order]
    results = {"settings": {"dataset": args.dataset, "batch": args.batch, "hidden_size": config["hidden_size"],
                            "train_stage": config["train_stage"], "threads": torch.get_num_threads(),
                            "shortest history in the batch": int(rows[model.ITEM_SEQ_LEN].min()),
                            "overrides": args.overrides},
               "lengths": {}}
    for length in sorted(args.lengths):
        interaction = batch_at_length(rows, length, model)
        results["lengths"][length] = measure(model, optimizer, interaction, args.repeats)
        print(f"length {length}: " + ", ".join(f"{k} {v:.3f} s" for k, v in results["lengths"][length].items()),
              flush=True)
    shortest = min(args.lengths)
    results["operators"] = top_operators(model, optimizer, batch_at_length(rows, shortest, model))
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "step_profile.json"), results, indent=1)
    parts = list(next(iter(results["lengths"].values())))
    lines = [f"Settings: `{json.dumps(results['settings'])}`", "",
             "| history length | " + " | ".join(f"{part}, CPU s" for part in parts) + " |",
             "|---" * (len(parts) + 1) + "|"]
    lines += [f"| {length} | " + " | ".join(f"{figures[part]:.3f}" for part in parts) + " |"
              for length, figures in results["lengths"].items()]
    lines += ["", f"Operators at length {shortest} (forward, backward and Adam; self CPU time):", "",
              "| operator | self CPU ms | calls | share |", "|---|---|---|---|"]
    lines += [f"| `{row['operator']}` | {row['self CPU ms']:.1f} | {row['calls']} | {row['share']:.1%} |"
              for row in results["operators"]]
    with atomic_open(os.path.join(args.out, "step_profile.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
