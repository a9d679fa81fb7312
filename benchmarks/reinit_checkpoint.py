"""The control of a transfer ablation: a pre-training checkpoint whose weights are drawn afresh.

    python benchmarks/reinit_checkpoint.py saved/MISSRec-pt5u-pretrain-20.pth --data_path data --seed 1 \\
        --out saved/MISSRec-pt5u-reinit-1.pth

Fine-tuning from the output with a frozen backbone (``--pretrained MISSRec=<out>``) trains exactly the
parameters that fine-tuning from the real checkpoint trains, on top of a frozen backbone that learned
nothing. The gap between the two rows is what the pre-trained weights carry; the gap to training from
scratch is what freezing a random backbone costs. The model is rebuilt from the checkpoint's own config on
its own dataset (any family, any stage), seeded by ``--seed`` as a run is, and every entry of the
checkpoint's ``state_dict`` is replaced by the fresh model's; ``--data_path`` says where that dataset lives
now. The output is a weights-only checkpoint (``state_dict``, the config, ``reinitialised_from`` and
``reinitialised``, the entries re-drawn).

``--only PREFIX ...`` re-draws just the entries whose names start with a prefix and keeps the others as
trained, to tell which part of a pre-trained model carries (or costs) what: ``--only adapters.`` gives the
pre-trained backbone a fresh item adapter; ``--only transformer. input_norm. position_embedding.`` gives the
pre-trained adapter a fresh backbone.
"""
import argparse
import os

from recbole.utils import init_seed

from recbole_missrec.quick_start import checkpoint_config
from recbole_missrec.trainer import CheckpointError, load_state, save_state
from recbole_missrec.utils import create_dataset


def fresh_state(checkpoint, path, data_path, seed):
    """The state_dict of the checkpoint's model as its run would initialise it under ``seed``."""
    config = checkpoint_config(checkpoint, path, data_path, {"seed": seed})
    dataset = create_dataset(config, config.model_class)
    train = dataset.build()[0]  # the split a run builds its model on (a pre-training set has only this one)
    init_seed(config["seed"], config["reproducibility"])
    return config.model_class(config, train).state_dict()


def reinitialise(path, data_path, seed, only=None):
    """The checkpoint at ``path`` with every state_dict entry re-drawn (shapes checked), or with those whose
    names start with one of the prefixes ``only``."""
    checkpoint = load_state(path)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} records no state_dict: pass a checkpoint written by recbole-missrec")
    fresh = fresh_state(checkpoint, path, data_path, seed)
    trained = checkpoint["state_dict"]
    mismatched = [key for key in trained if key not in fresh or fresh[key].shape != trained[key].shape]
    if mismatched:
        raise CheckpointError(f"{path}: the rebuilt model differs from the checkpoint at {mismatched[:5]} (is "
                              f"--data_path the dataset the checkpoint was trained on?)")
    redrawn = {key for key in trained if only is None or key.startswith(tuple(only))}
    if not redrawn:
        raise CheckpointError(f"{path}: no state_dict entry starts with {' or '.join(only)}; its entries are named "
                              f"like {sorted(trained)[:4]}")
    return {"model": checkpoint["config"]["model"], "config": dict(checkpoint["config"], seed=seed),
            "train_stage": checkpoint.get("train_stage"), "epoch": 0, "reinitialised_from": os.path.abspath(path),
            "reinitialised": sorted(redrawn),
            "state_dict": {key: fresh[key] if key in redrawn else trained[key] for key in trained}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a pre-training (or any) checkpoint of the plugin")
    parser.add_argument("--data_path", default=None, help="folder holding the checkpoint's dataset (default: as recorded)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fresh initialisation")
    parser.add_argument("--only", nargs="+", metavar="PREFIX",
                        help="re-draw only the entries whose names start with one of these (default: every entry)")
    parser.add_argument("--out", required=True, help="the re-initialised checkpoint (.pth)")
    args = parser.parse_args(argv)
    if os.path.abspath(args.out) == os.path.abspath(args.checkpoint):
        raise SystemExit(f"--out {args.out} is the checkpoint itself: choose another file")
    state = reinitialise(args.checkpoint, args.data_path, args.seed, args.only)
    save_state(state, args.out)
    part = f"{len(state['reinitialised'])} entries ({' '.join(args.only)}*)" if args.only else "every entry"
    print(f"wrote {args.out}: {args.checkpoint} with {part} re-initialised, seed {args.seed}")


if __name__ == "__main__":
    main()
