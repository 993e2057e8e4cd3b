"""Config validation and presets."""

from __future__ import annotations

import pytest

from dlrmkit.config import ModelConfig, ScheduleConfig, SynthConfig, TrainConfig, preset
from dlrmkit.errors import ConfigError, DlrmkitError

TABLES = (10, 20, 30)


@pytest.mark.parametrize("kwargs", [
    dict(table_sizes=(), embedding_dim=4, bottom_mlp=(3, 4), top_mlp=(1,)),
    dict(table_sizes=(0, 2), embedding_dim=4, bottom_mlp=(3, 4), top_mlp=(1,)),
    dict(table_sizes=TABLES, embedding_dim=0, bottom_mlp=(3, 0), top_mlp=(1,)),
    dict(table_sizes=TABLES, embedding_dim=4, bottom_mlp=(3,), top_mlp=(1,)),
    dict(table_sizes=TABLES, embedding_dim=4, bottom_mlp=(3, 4), top_mlp=(8, 2)),
    dict(table_sizes=TABLES, embedding_dim=4, bottom_mlp=(3, 5), top_mlp=(1,)),  # dot: 5 != 4
    dict(table_sizes=TABLES, embedding_dim=4, bottom_mlp=(3, 4), top_mlp=(1,), interaction="sum"),
    dict(table_sizes=TABLES, embedding_dim=4, bottom_mlp=(3, 4), top_mlp=(1,), max_index_range=0),
])
def test_model_config_rejects_invalid(kwargs):
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)


def test_model_config_cat_allows_other_bottom_width_and_round_trips():
    cfg = ModelConfig([10, 20], 4, [3, 5], [7, 1], interaction="cat", max_index_range=15)
    assert cfg.table_sizes == (10, 20) and cfg.bottom_mlp == (3, 5)
    assert cfg.num_dense == 3
    assert cfg.effective_table_sizes == (10, 15)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name, dim, bottom, top, cap", [
    ("tiny", 16, (13, 64, 16), (64, 1), None),
    ("kaggle", 16, (13, 512, 256, 64, 16), (512, 256, 1), None),
    ("terabyte", 128, (13, 512, 256, 128), (1024, 1024, 512, 256, 1), 40_000_000),
])
def test_presets(name, dim, bottom, top, cap):
    cfg = preset(name, TABLES)
    assert (cfg.embedding_dim, cfg.bottom_mlp, cfg.top_mlp, cfg.max_index_range) == (dim, bottom, top, cap)
    assert cfg.interaction == "dot" and cfg.table_sizes == TABLES
    with pytest.raises(ConfigError):
        preset("huge", TABLES)


@pytest.mark.parametrize("kwargs", [
    dict(optimizer="adam"), dict(learning_rate=0), dict(batch_size=0), dict(epochs=0), dict(max_steps=0),
    dict(eval_every=0), dict(checkpoint_every=0), dict(target_auc=0.5), dict(target_auc=1.2), dict(log_every=0),
])
def test_train_config_rejects_invalid(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_train_config_round_trip_with_schedule():
    cfg = TrainConfig(schedule=ScheduleConfig(2, 5, 10), max_steps=7)
    again = TrainConfig.from_dict(cfg.to_dict())  # the schedule comes back as a dict
    assert again == cfg and isinstance(again.schedule, ScheduleConfig)


@pytest.mark.parametrize("kwargs", [
    dict(rows=13), dict(layout="daily"), dict(days=1), dict(cardinalities=(5,) * 25),
    dict(cardinality_scale=0), dict(cardinality_scale=1.5), dict(click_rate=0), dict(click_rate=1),
    dict(zipf_exponent=1.0), dict(chunk_rows=0), dict(workers=0),
])
def test_synth_config_rejects_invalid(kwargs):
    with pytest.raises(ConfigError):
        SynthConfig(**kwargs)


def test_config_error_is_a_dlrmkit_error():
    assert issubclass(ConfigError, DlrmkitError)


def test_with_max_index_range():
    cfg = ModelConfig((5, 8), 4, (13, 4), (1,))
    assert cfg.with_max_index_range(None) is cfg
    capped = cfg.with_max_index_range(8)
    assert capped.max_index_range == 8 and capped.effective_table_sizes == (5, 8)
    assert capped.with_max_index_range(8) is capped
    with pytest.raises(ConfigError, match="ckpt was trained with max index range 8, not 10"):
        capped.with_max_index_range(10, "ckpt")
    with pytest.raises(ConfigError, match="table 1 has 8 rows, more than max index range 6"):
        cfg.with_max_index_range(6)
