"""The embedded default: RecBole's bundled ml-100k with text features encoded from its movie titles."""
import json
import os

from recbole_missrec.config import PluginConfig
from recbole_missrec.data import MultiModalDataset
from recbole_missrec.data.ml100k import cache_dir, ensure_text_features, movie_texts, prepare

pytest_plugins = ["preprocess_fixtures"]  # tiny_bert


def ml100k_dataset(encoder, plm_size):
    config = PluginConfig(
        model="MISSRec", dataset="ml-100k",
        config_dict={"text_encoder": encoder, "plm_size": plm_size, "state": "WARNING"},
    )
    prepare(config)  # the quick start's step before loading the dataset
    return MultiModalDataset(config)


def test_movie_texts_come_from_the_bundled_item_file():
    config = PluginConfig(model="MISSRec", dataset="ml-100k")
    texts = movie_texts(os.path.join(config["data_path"], "ml-100k.item"))
    assert len(texts) == 1683 and texts[0] == ""
    assert texts[1] == "Toy Story. Animation Children's Comedy. 1995"


def test_ml100k_dataset_reads_the_cached_title_features(tiny_bert):
    dataset = ml100k_dataset(tiny_bert, 32)
    store = dataset.item_features["text"]
    assert store.table.shape == (dataset.item_num, 1, 32)
    assert store.present[1:].all()  # every movie has a title
    assert os.path.getsize(os.path.join(cache_dir(), "ml-100k.feat1CLS")) == 1683 * 32 * 4


def test_features_are_cached_and_rebuilt_for_another_encoder(tiny_bert, tmp_path):
    data_path = PluginConfig(model="MISSRec", dataset="ml-100k")["data_path"]
    path = os.path.join(ensure_text_features(data_path, "feat1CLS", tiny_bert), "ml-100k.feat1CLS")
    stamp = os.path.getmtime(path)
    ensure_text_features(data_path, "feat1CLS", tiny_bert)
    assert os.path.getmtime(path) == stamp  # reused, not re-encoded
    other = tmp_path / "other_encoder"
    os.symlink(tiny_bert, other)
    ensure_text_features(data_path, "feat1CLS", str(other))
    with open(path + ".json") as handle:
        assert json.load(handle)["encoder"] == str(other)
