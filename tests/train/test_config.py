"""Config loading and command-line overrides."""

import textwrap

import pytest

from msvision import config as config_lib


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        textwrap.dedent(
            """
            import ml_collections

            from msvision.models.build import module_config

            def get_config(arg=None):
                c = ml_collections.ConfigDict()
                c.seed = 0
                c.model = ml_collections.ConfigDict()
                c.model.neck = module_config("neck", "tpn")
                c.model.neck.num_layers = 1
                c.optim = ml_collections.ConfigDict(dict(lr=1e-4, clip_norm=0.0))
                c.data = ml_collections.ConfigDict(dict(buckets=((64, 64),)))
                c.data.train = ml_collections.ConfigDict(dict(annotations=arg or ''))
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
            "--config.model.head.anchors.aspect_ratios=(1.0,2.0)",
            "--config.optim.lr=2e-4",
            "--config.optim.clip_norm=1",
            "--config.model.neck.p6_relu=false",
            "--config.data.buckets=((128,128),(64,96))",
        ],
    )
    assert c.model.neck.num_layers == 3
    assert c.model.neck.name == "tpn"
    assert tuple(c.model.head.anchors.aspect_ratios) == (1.0, 2.0)
    assert c.optim.lr == pytest.approx(2e-4)
    assert isinstance(c.optim.clip_norm, float) and c.optim.clip_norm == 1.0
    assert c.model.neck.p6_relu is False
    assert tuple(map(tuple, c.data.buckets)) == ((128, 128), (64, 96))


def test_misspelled_key_fails_with_suggestion(config_file):
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'model.neck.num_layer'.*model.neck.num_layers"):
        config_lib.load_config(config_file, ["--config.model.neck.num_layer=3"])
    with pytest.raises(config_lib.ConfigError, match="unknown config key"):
        config_lib.load_config(config_file, ["--config.nothing.here=1"])


def test_misspelled_key_in_a_config_file_fails_before_anything_is_built(tmp_path):
    """The same rule for keys set in a config file (e.g. 'model.neck.num_layerz')."""
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent(
        """
        from msvision.models.build import module_config
        import ml_collections

        def get_config():
            c = ml_collections.ConfigDict()
            c.model = ml_collections.ConfigDict()
            c.model.neck = module_config("neck", "tpn")
            c.model.neck.num_layerz = 3
            return c
        """))
    with pytest.raises(config_lib.ConfigError, match=r"model.neck.num_layerz.*Did you mean: model.neck.num_layers"):
        config_lib.load_config(str(path))
    path.write_text("import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
                    "    c.data = ml_collections.ConfigDict(dict(batchsize=3))\n    return c\n")
    with pytest.raises(config_lib.ConfigError, match=r"data.batchsize.*data.batch_size"):
        config_lib.load_config(str(path))


def test_every_default_is_filled_in(config_file):
    c = config_lib.load_config(config_file)
    assert c.model.neck.num_bottlenecks == 2 and c.model.neck.hidden_channels == 64  # TPN's signature defaults
    assert c.model.backbone.depth == 50 and c.model.head.name == "retinanet"
    assert c.train.log_every == 50 and c.data.batch_size == 16
    assert tuple(map(tuple, c.data.buckets)) == ((64, 64),)


def test_type_mismatch_is_an_error(config_file):
    with pytest.raises(config_lib.ConfigError, match="expected int"):
        config_lib.load_config(config_file, ["--config.model.neck.num_layers=three"])


def test_config_argument_and_saving(config_file, tmp_path):
    c = config_lib.load_config(config_file + ":hello")
    assert c.data.train.annotations == "hello"
    config_lib.save_config(c, str(tmp_path / "out" / "config.json"))
    import json

    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model"]["neck"]["num_layers"] == 1 and saved["data"]["train"]["annotations"] == "hello"
    assert saved["model"]["neck"]["num_bottlenecks"] == 2


def test_split_config_args():
    overrides, rest = config_lib.split_config_args(["--config=x.py", "--config.a=1", "--workdir", "w"])
    assert overrides == ["--config.a=1"] and rest == ["--config=x.py", "--workdir", "w"]
