"""Serving from the command line; every verb prints JSON to stdout.

    python -m recbole_missrec export --checkpoint CKPT --out DIR [--data_path DATA]
    python -m recbole_missrec recommend --bundle DIR --history TOKEN [TOKEN ...] [-k 10]
    python -m recbole_missrec recommend --bundle DIR --histories FILE [-k 10] [--exclude-history] [--ann]
    python -m recbole_missrec add-items --bundle DIR --features text=new_text.npz img=new_img.npz

``--histories``: one history per line, item tokens separated by white space, oldest first.
``--features``: per feature store of the bundle (MISSRec: text, img), a multi-vector ``.npz`` file
(``vectors``, ``offsets``, ``items``; see dataset_preprocess/README.md); the new items are the union of the
files' ``items``, and an item absent from a file lacks that modality.
Torch and the plugin are imported only once a verb runs, so ``--help`` is quick.
"""
import argparse
import json
import sys


def _export(args):
    from recbole_missrec.serving.bundle import export_bundle

    manifest = export_bundle(args.checkpoint, args.out, args.data_path)
    return {"bundle": args.out, "model": manifest["model"], "train_stage": manifest["train_stage"],
            "items": manifest["item_rows"] - 1, "stores": manifest["stores"], "files": manifest["files"]}


def _read_histories(path):
    with open(path, encoding="utf-8") as handle:
        return [line.split() for line in handle if line.strip()]


def _recommend(args):
    from recbole_missrec.serving.recommender import Recommender

    histories = _read_histories(args.histories) if args.histories else [args.history]
    recommender = Recommender.load(args.bundle)
    if args.ann:
        recommender.build_index(k_prime=args.k_prime, nprobe=args.nprobe)
    results = recommender.recommend(histories, k=args.k, exclude_history=args.exclude_history)
    return {"k": args.k, "candidates": "two-stage" if args.ann else "exact", "notes": recommender.notes,
            "results": [dict(result, history=history) for history, result in zip(histories, results)]}


def _feature_files(pairs):
    files = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--features takes STORE=FILE pairs (e.g. text=new_text.npz), not {pair!r}")
        files[name] = path
    return files


def _add_items(args):
    import numpy as np

    from recbole_missrec.data.feature_file import read_multi_vector_file
    from recbole_missrec.data.feature_store import read_npz_store
    from recbole_missrec.serving.recommender import Recommender, store_rows

    files = _feature_files(args.features)
    recommender = Recommender.load(args.bundle)
    unknown = sorted(set(files) - set(recommender.stores))
    if unknown:
        raise ValueError(f"--features names {unknown}; the bundle's feature stores are {list(recommender.stores)}")
    tokens = list(dict.fromkeys(token for path in files.values() for token in read_multi_vector_file(path)[0].tolist()))
    max_slots = recommender.config["max_feature_slots"]
    features = {name: store_rows(read_npz_store(path, recommender.stores[name].dim, np.array(tokens), max_slots), 1)
                for name, path in files.items()}
    note = recommender.add_items(tokens, features)
    manifest = recommender.save()
    return {"bundle": args.bundle, "added": tokens, "items": manifest["item_rows"] - 1, "note": note}


def parser():
    main = argparse.ArgumentParser(prog="python -m recbole_missrec", description=__doc__.split("\n\n")[0])
    verbs = main.add_subparsers(dest="verb", required=True)
    export = verbs.add_parser("export", help="a trained checkpoint -> a self-contained serving bundle")
    export.add_argument("--checkpoint", required=True, help="a .pth written by the plugin's trainers")
    export.add_argument("--out", required=True, help="the bundle folder to create (must not exist or be empty)")
    export.add_argument("--data_path", help="where the checkpoint's dataset lives now (its parent folder)")
    export.set_defaults(run=_export)
    recommend = verbs.add_parser("recommend", help="top-k items of histories, as JSON")
    recommend.add_argument("--bundle", required=True)
    source = recommend.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", nargs="+", metavar="TOKEN", help="one history, oldest item first")
    source.add_argument("--histories", metavar="FILE", help="one history per line, tokens separated by spaces")
    recommend.add_argument("-k", type=int, default=10)
    recommend.add_argument("--exclude-history", action="store_true", help="leave each history's items out")
    recommend.add_argument("--ann", action="store_true", help="two-stage: approximate candidates, exact ranking")
    recommend.add_argument("--k-prime", type=int, default=50, help="candidates per index with --ann")
    recommend.add_argument("--nprobe", type=int, default=64, help="inverted-file cells searched with --ann")
    recommend.set_defaults(run=_recommend)
    add = verbs.add_parser("add-items", help="add new items to a bundle from their features")
    add.add_argument("--bundle", required=True)
    add.add_argument("--features", nargs="+", required=True, metavar="STORE=FILE",
                     help="a multi-vector .npz per feature store, e.g. text=new_text.npz img=new_img.npz")
    add.set_defaults(run=_add_items)
    return main


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        result = args.run(args)
    except (ValueError, OSError, RuntimeError, ImportError) as error:  # BundleError, FeatureFileError, CheckpointError
        print(f"error: {error}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
