"""Config loading and command-line overrides."""

import textwrap

import ml_collections
import pytest

from msvision import config as config_lib


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        textwrap.dedent(
            """
            import ml_collections

            def get_config(arg=None):
                c = ml_collections.ConfigDict()
                c.seed = 0
                c.model = ml_collections.ConfigDict(dict(neck=dict(num_layers=1, name='fpn'), dims=(1, 2)))
                c.optim = ml_collections.ConfigDict(dict(lr=1e-4, clip_norm=0.0, use_ema=False))
                c.tag = arg or ''
                return c
            """
        )
    )
    return str(path)


def test_overrides_parse_to_the_existing_types(config_file):
    c = config_lib.load_config(
        config_file,
        [
            "--config.model.neck.num_layers=3",
            "--config.model.neck.name=tpn",
            "--config.optim.lr=2e-4",
            "--config.optim.clip_norm=1",
            "--config.optim.use_ema=true",
            "--config.model.dims=(3,4,5)",
        ],
    )
    assert c.model.neck.num_layers == 3
    assert c.model.neck.name == "tpn"
    assert c.optim.lr == pytest.approx(2e-4)
    assert isinstance(c.optim.clip_norm, float) and c.optim.clip_norm == 1.0
    assert c.optim.use_ema is True
    assert tuple(c.model.dims) == (3, 4, 5)


def test_misspelled_key_fails_with_suggestion(config_file):
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'model.neck.num_layer'.*model.neck.num_layers"):
        config_lib.load_config(config_file, ["--config.model.neck.num_layer=3"])
    with pytest.raises(config_lib.ConfigError, match="unknown config key"):
        config_lib.load_config(config_file, ["--config.nothing.here=1"])


def test_type_mismatch_is_an_error(config_file):
    with pytest.raises(config_lib.ConfigError, match="expected int"):
        config_lib.load_config(config_file, ["--config.model.neck.num_layers=three"])


def test_config_argument_and_saving(config_file, tmp_path):
    c = config_lib.load_config(config_file + ":hello")
    assert c.tag == "hello"
    config_lib.save_config(c, str(tmp_path / "out" / "config.json"))
    import json

    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model"]["neck"]["num_layers"] == 1 and saved["tag"] == "hello"


def test_split_config_args():
    overrides, rest = config_lib.split_config_args(["--config=x.py", "--config.a=1", "--workdir", "w"])
    assert overrides == ["--config.a=1"] and rest == ["--config=x.py", "--workdir", "w"]
