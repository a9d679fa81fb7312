"""Length-aware batches (data/dataloader.py): trimmed, bucketed, seeded, and metric-preserving."""
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from conftest import tiny_run_config, write_benchmark_dataset
from recbole_missrec.config import PluginConfig
from recbole_missrec.data.dataloader import (
    LengthAwareEvalDataLoader, LengthAwareTrainDataLoader, data_preparation, sortish_batches, trim_to_longest,
)
from recbole_missrec.trainer import PluginTrainer
from recbole_missrec.utils import create_dataset


def test_trim_cuts_every_history_field_to_the_longest_history():
    batch = Interaction({
        "item_id_list": torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]]), "item_length": torch.tensor([2, 1]),
        "timestamp_list": torch.ones(2, 4), "item_id": torch.tensor([5, 6]), "other_list": torch.ones(2, 3),
    })
    trimmed = trim_to_longest(batch, "item_length", "item_id_list", "_list")
    assert trimmed["item_id_list"].tolist() == [[1, 2], [3, 0]] and trimmed["timestamp_list"].shape == (2, 2)
    assert trimmed["other_list"].shape == (2, 3) and trimmed["item_id"].tolist() == [5, 6]


def test_sortish_batches_cover_every_row_once_with_similar_lengths():
    uniform = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    lengths = 1 + (uniform ** 4 * 49).long()  # mostly short histories and a long tail, like the real data
    batches = sortish_batches(lengths, 50, 4, torch.Generator().manual_seed(1))
    assert sorted(torch.cat(batches).tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max().item() for b in batches)
    random = sum(len(b) * lengths[b].max().item() for b in torch.randperm(1000).split(50))
    assert padded < 0.6 * random  # the padding a random batching would carry is mostly gone
    again = sortish_batches(lengths, 50, 4, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # seeded
    other = sortish_batches(lengths, 50, 4, torch.Generator().manual_seed(2))
    assert any(not torch.equal(a, b) for a, b in zip(batches, other))  # another epoch, other batches


def test_the_loader_serves_trimmed_bucketed_batches_and_the_same_metrics(tmp_path):
    write_benchmark_dataset(tmp_path, n_users=80)
    config = PluginConfig(model="MISSRec", dataset="toy",
                          config_dict=tiny_run_config(tmp_path, topk=[5, 10], epochs=1, train_batch_size=16,
                                                      length_buckets=2))
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    assert isinstance(train_data, LengthAwareTrainDataLoader) and isinstance(test_data, LengthAwareEvalDataLoader)
    widths = [batch["item_id_list"].shape[1] for batch in train_data]
    assert len(widths) == len(train_data) and min(widths) < max(widths)
    for batch in train_data:
        assert batch["item_length"].max().item() == batch["item_id_list"].shape[1]
    model = config.model_class(config, train_data._dataset)
    trainer = PluginTrainer(config, model)
    trainer.fit(train_data, valid_data, saved=False)
    padded = FullSortEvalDataLoader(config, test_data._dataset, test_data._sampler)
    assert trainer.evaluate(test_data, load_best_model=False) == trainer.evaluate(padded, load_best_model=False)


def test_recbole_models_keep_recbole_loaders_unless_asked(tmp_path):
    write_benchmark_dataset(tmp_path)
    base = tiny_run_config(tmp_path, topk=[5], hidden_size=16, inner_size=16)
    plain = PluginConfig(model="SASRec", dataset="toy", config_dict=base)
    loaders = data_preparation(plain, create_dataset(plain))
    assert not any(isinstance(loader, (LengthAwareTrainDataLoader, LengthAwareEvalDataLoader)) for loader in loaders)
    asked = PluginConfig(model="SASRec", dataset="toy", config_dict=dict(base, trim_batches=True, length_buckets=4))
    train_data, _, test_data = data_preparation(asked, create_dataset(asked))
    assert isinstance(train_data, LengthAwareTrainDataLoader) and isinstance(test_data, LengthAwareEvalDataLoader)
