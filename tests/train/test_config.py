"""Config loading, the section schemas and command-line overrides (``msvision.config``,
``msvision.config_sections``, the commands' shared ``--config`` wiring)."""

import dataclasses
import json
import pathlib
import textwrap

import ml_collections
import pytest

from msvision import config as config_lib
from msvision import config_sections
from msvision.config_schema import section_defaults, signature_schema
from msvision.models.build import default_model_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py"))


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
    c = config_sections.load_config(
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


# The command lines of README.md, docs/ and benchmarks/RESULTS.md, as the shell passes them
# (quotes removed): (config file, override, field, value).
DOCUMENTED_OVERRIDES = [
    ("configs/effseg/large_effseg.py", "--config.model.seg_head.selected_per_roi=(100,150,300)",
     "model.seg_head.selected_per_roi", (100, 150, 300)),
    ("configs/retinanet/r50_fpn.py", "--config.model.backbone.pretrained=/path/resnet50.pth",
     "model.backbone.pretrained", "/path/resnet50.pth"),
    ("configs/retinanet/r50_fpn.py", "--config.data.train.annotations=/path/train.json",
     "data.train.annotations", "/path/train.json"),
    ("configs/retinanet/r50_fpn.py", "--config.data.val.images=val/", "data.val.images", "val/"),
    ("configs/retinanet/r50_fpn.py", "--config.data.batch_size=8", "data.batch_size", 8),
    ("configs/quickstart.py", "--config.optim.decay_epochs=(9,)", "optim.decay_epochs", (9,)),
    ("configs/quickstart.py", "--config.optim.decay_epochs=(9,11)", "optim.decay_epochs", (9, 11)),
    ("configs/quickstart.py", "--config.optim.epochs=12", "optim.epochs", 12),
    ("configs/quickstart.py", "--config.train.num_steps=300", "train.num_steps", 300),
    ("configs/quickstart.py", "--config.train.checkpoint_every=0", "train.checkpoint_every", 0),
    ("configs/effseg/large_effseg.py", "--config.seed=1", "seed", 1),
    ("configs/effseg/large_effseg.py", "--config.optim.frozen_parts=('backbone','head')",
     "optim.frozen_parts", ("backbone", "head")),
    ("configs/effseg/large_effseg.py", '--config.optim.frozen_parts=("backbone","head")',
     "optim.frozen_parts", ("backbone", "head")),
    ("configs/effseg/large_effseg.py", "--config.train.eval_every=750", "train.eval_every", 750),
    ("configs/effseg/large_effseg.py", "--config.train.init_from=runs/large/detector", "train.init_from",
     "runs/large/detector"),
    ("configs/fqdet/r50_fpn_fqdet.py", "--config.model.head.matcher.matching=hungarian",
     "model.head.matcher.matching", "hungarian"),
    ("configs/fqdet/r50_fpn_fqdet.py", "--config.model.head.loss.box=giou", "model.head.loss.box", "giou"),
    ("configs/fqdet/r50_fpn_fqdet.py", "--config.model.head.loss.box_weight=2.0",  # None -> a value
     "model.head.loss.box_weight", 2.0),
    ("configs/fqdet/r50_fpn_fqdet.py", "--config.model.head.prediction.aux_losses=True",
     "model.head.prediction.aux_losses", True),
    ("configs/fqdet/r50_fpn_fqdet.py", "--config.model.head.anchors.aspect_ratios=(1.0,)",
     "model.head.anchors.aspect_ratios", (1.0,)),
    ("configs/fqdet/r50_fpn_fqdet.py", "--config.model.head.prediction.cls_net=linear",
     "model.head.prediction.cls_net", "linear"),
    ("configs/fqdet/r50_fpn_fqdet.py", "--config.model.head.prediction.box_net=linear_norm_mlp",
     "model.head.prediction.box_net", "linear_norm_mlp"),
    ("configs/fqdet/r50_tpn_fqdet.py", "--config.model.head.inference.labels=query_class_pairs",
     "model.head.inference.labels", "query_class_pairs"),
    ("configs/fqdet/r50_tpn_fqdet_improved.py", "--config.model.head.inference.labels=per_query_label",
     "model.head.inference.labels", "per_query_label"),
    ("configs/fqdet/r50_defenc_p2_fqdetv2.py", "--config.model.neck.remat=False", "model.neck.remat", False),
    ("configs/panoptic/quickstart_panoptic.py", "--config.eval.panoptic.void_rule=winner_prob",
     "eval.panoptic.void_rule", "winner_prob"),
    ("configs/effseg/quickstart_refinemask.py", "--config.model.seg_head.loss.semantic_weight=1.0",
     "model.seg_head.loss.semantic_weight", 1.0),
]


def _field(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("path, override, field, value", DOCUMENTED_OVERRIDES,
                         ids=[o.removeprefix("--config.") for _, o, _, _ in DOCUMENTED_OVERRIDES])
def test_documented_command_lines(path, override, field, value):
    got = _field(config_sections.load_config(str(ROOT / path), [override]), field)
    assert got == value and type(got) is type(value), (got, value)


def test_misspelled_key_fails_with_suggestion(config_file):
    with pytest.raises(config_lib.ConfigError,
                       match=r"unknown config key 'model.neck.num_layer'.*model.neck.num_layers"):
        config_sections.load_config(config_file, ["--config.model.neck.num_layer=3"])
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'nothing' \(in --config.nothing.here\)\."
                                                     r".*Valid keys: data, eval, model"):
        config_sections.load_config(config_file, ["--config.nothing.here=1"])
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'modle' \(in --config.modle.neck.x\)\. "
                                                     r"Did you mean: model\?"):
        config_sections.load_config(config_file, ["--config.modle.neck.x=1"])


# (section, misspelled key, the suggestion): one per schema, nested sections included.
MISSPELLED = [
    ("data", "batchsize", "data.batch_size"),
    ("data.train", "anotations", "data.train.annotations"),
    ("data.val", "image", "data.val.images"),
    ("data.augment", "hflip_prb", "data.augment.hflip_prob"),
    ("data.synthetic", "num_trains", "data.synthetic.num_train"),
    ("optim", "clipnorm", "optim.clip_norm"),
    ("train", "eval_evry", "train.eval_every"),
    ("eval", "boundary_ab", "eval.boundary_ap"),
    ("eval.panoptic", "void_rul", "eval.panoptic.void_rule"),
    ("model", "num_clases", "model.num_classes"),
    ("model.backbone", "dept", "model.backbone.depth"),
    ("model.neck", "channel", "model.neck.channels"),
    ("model.head", "subnet", "model.head.subnets"),
    ("model.head.subnets", "num_conv", "model.head.subnets.num_convs"),
    ("model.head.inference", "nms_candidate", "model.head.inference.nms_candidates"),
    ("model.head.anchors", "num_size", "model.head.anchors.num_sizes"),
]


def _nested_config_file(tmp_path, section, key):
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent(f"""
        import ml_collections

        def get_config():
            config = node = ml_collections.ConfigDict()
            for part in {section!r}.split("."):
                node[part] = ml_collections.ConfigDict()
                node = node[part]
            node[{key!r}] = 1
            return config
        """))
    return str(path)


@pytest.mark.parametrize("section, key, suggestion", MISSPELLED, ids=[f"{s}.{k}" for s, k, _ in MISSPELLED])
def test_a_misspelled_key_fails_alike_in_a_file_and_on_the_command_line(tmp_path, section, key, suggestion):
    expected = rf"unknown config key '{section}\.{key}'( \(\w+ '\w+'\))?\. Did you mean: {suggestion}[,?].*Valid keys: "
    with pytest.raises(config_lib.ConfigError, match=expected) as from_file:
        config_sections.load_config(_nested_config_file(tmp_path, section, key))
    empty = tmp_path / "empty.py"
    empty.write_text("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict()\n")
    with pytest.raises(config_lib.ConfigError, match=expected) as from_command_line:
        config_sections.load_config(str(empty), [f"--config.{section}.{key}=1"])
    assert str(from_file.value) == str(from_command_line.value)


def test_a_misspelled_seg_head_key_names_the_head(tmp_path):
    path = ROOT / "configs" / "effseg" / "quickstart_effseg.py"
    with pytest.raises(config_lib.ConfigError, match=r"'model.seg_head.selected_per_ro' \(seg_head 'effseg'\)\. "
                                                     r"Did you mean: model.seg_head.selected_per_roi"):
        config_sections.load_config(str(path), ["--config.model.seg_head.selected_per_ro=(1,2,3)"])


def test_a_misspelled_override_fails_from_the_command_as_one_line(tmp_path, capsys):
    import train as train_cli

    assert train_cli.main([f"--config={ROOT / 'configs' / 'quickstart.py'}", f"--workdir={tmp_path / 'run'}",
                           "--config.optim.clipnorm=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: unknown config key 'optim.clipnorm'. "
                                               "Did you mean: optim.clip_norm?"), err
    assert not (tmp_path / "run").exists()


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
        config_sections.load_config(str(path))
    path.write_text("import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
                    "    c.data = ml_collections.ConfigDict(dict(batchsize=3))\n    return c\n")
    with pytest.raises(config_lib.ConfigError, match=r"data.batchsize.*data.batch_size"):
        config_sections.load_config(str(path))
    path.write_text("import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
                    "    c.optimizer = ml_collections.ConfigDict()\n    return c\n")
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'optimizer'. Did you mean: optim\?"):
        config_sections.load_config(str(path))


def test_a_section_given_as_a_value_fails(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import ml_collections\n\ndef get_config():\n"
                    "    return ml_collections.ConfigDict(dict(data=dict(train='x.json')))\n")
    with pytest.raises(config_lib.ConfigError, match="'data.train' is a section with fields"):
        config_sections.load_config(str(path))


def test_every_default_is_filled_in(config_file):
    c = config_sections.load_config(config_file)
    assert c.model.neck.num_bottlenecks == 2 and c.model.neck.hidden_channels == 64  # TPN's signature defaults
    assert c.model.backbone.depth == 50 and c.model.head.name == "retinanet"
    assert c.train.log_every == 50 and c.data.batch_size == 16
    assert tuple(map(tuple, c.data.buckets)) == ((64, 64),)
    assert c.data.mask_format == "image" and c.data.box_mask_size == 128 and c.data.val.tfds_split == "validation"


def test_the_defaults_are_the_schemas_and_stated_once():
    """An empty config resolves to each schema's defaults, and the ``default_*_config()``
    helpers the config files start from are those same defaults."""
    from msvision.data.pipeline import default_data_config
    from msvision.train.defaults import default_eval_config, default_train_config
    from msvision.train.optimizer import default_optim_config

    resolved = config_sections.resolve_config(ml_collections.ConfigDict())
    assert list(resolved.keys()) == sorted(config_sections.SECTIONS)
    assert resolved.seed == config_sections.SECTIONS["seed"]
    assert resolved.model.to_dict() == default_model_config().to_dict()
    helpers = dict(data=default_data_config, optim=default_optim_config, train=default_train_config,
                   eval=default_eval_config)
    for name, helper in helpers.items():
        schema = config_sections.SECTIONS[name]
        assert dataclasses.is_dataclass(schema) and schema.__dataclass_params__.frozen, name
        defaults = dataclasses.asdict(schema())  # the constructor's defaults, nested sections included
        assert resolved[name].to_dict() == defaults, name
        assert helper().to_dict() == defaults == section_defaults(schema).to_dict(), name
        assert set(signature_schema(schema)) == {f.name for f in dataclasses.fields(schema)}, name


def test_resolving_and_overriding_leave_their_input_unchanged(config_file):
    given = config_lib.load_config_file(config_file)
    before = (str(given), id(given.model), id(given.model.neck), given.model.neck.num_layers)
    resolved = config_sections.resolve_config(given)
    overridden = config_lib.apply_overrides(resolved, ["--config.model.neck.num_layers=5", "--config.seed=3"])
    assert (str(given), id(given.model), id(given.model.neck), given.model.neck.num_layers) == before
    assert "backbone" not in given.model and "train" not in given
    assert resolved.model.neck.num_layers == 1 and resolved.seed == 0
    assert overridden.model.neck.num_layers == 5 and overridden.seed == 3
    assert resolved.model.neck is not given.model.neck and overridden.model is not resolved.model
    again = config_sections.resolve_config(resolved)
    assert again.to_dict() == resolved.to_dict() and again is not resolved


def test_the_trainer_writes_into_no_config_it_is_given(tmp_path):
    """The run's config (dataset paths, num_classes) is a copy: ``prepare_synthetic`` and
    ``run_config`` leave the caller's config as it was."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "train"))
    import tiny_config

    from msvision.train import data_setup, loop

    config = config_sections.resolve_config(tiny_config.get_config(str(tmp_path / "shapes")))
    before = str(config)
    info = data_setup.dataset_info(config.data)
    run = loop.run_config(config, info)
    assert str(config) == before and config.data.train.annotations == ""
    assert run.data.train.annotations == str(tmp_path / "shapes" / "train" / "instances.json")
    assert run.model.num_classes == info.classes.num_classes != config.model.num_classes


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_file_resolves(path):
    config = config_sections.load_config(str(ROOT / path))
    assert sorted(config.keys()) == sorted(config_sections.SECTIONS)
    assert config_sections.resolve_config(config).to_dict() == config.to_dict()  # complete: nothing to add


def test_type_mismatch_is_an_error(config_file):
    with pytest.raises(config_lib.ConfigError, match="expected int"):
        config_sections.load_config(config_file, ["--config.model.neck.num_layers=three"])


def test_config_argument_and_saving(config_file, tmp_path):
    c = config_sections.load_config(config_file + ":hello")
    assert c.data.train.annotations == "hello"
    config_lib.save_config(c, str(tmp_path / "out" / "config.json"))

    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model"]["neck"]["num_layers"] == 1 and saved["data"]["train"]["annotations"] == "hello"
    assert saved["model"]["neck"]["num_bottlenecks"] == 2
    assert config_lib.read_saved_config(str(tmp_path / "out" / "config.json")).to_dict() == saved


SAVED_RECORDS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").rglob("config.json"))


def test_saved_run_configs_are_read_as_written():
    """The ``config.json`` records shipped under ``benchmarks/`` (a published detector, the
    large-object runs) read back as written, fields of switches deleted since
    (``scan_blocks``, ``flatten``) included; they are history, not configs to resolve."""
    assert "benchmarks/weights/large_detector/config.json" in SAVED_RECORDS and len(SAVED_RECORDS) > 1
    for path in SAVED_RECORDS:
        saved = config_lib.read_saved_config(str(ROOT / path))
        assert saved.to_dict() == json.loads((ROOT / path).read_text()), path
        assert saved.data.val.annotations.endswith("instances.json"), path  # what benchmarks/mask_heads_large.py reads
    detector = config_lib.read_saved_config(str(ROOT / SAVED_RECORDS[-1]))
    with pytest.raises(config_lib.ConfigError, match="unknown config key"):
        config_sections.resolve_config(detector)  # a record of deleted switches is not a config to run


def test_split_config_args():
    overrides, rest = config_lib.split_config_args(["--config=x.py", "--config.a=1", "--workdir", "w"])
    assert overrides == ["--config.a=1"] and rest == ["--config=x.py", "--workdir", "w"]


def _entry_points():
    import eval as eval_cli
    import train as train_cli

    from msvision import export, predict
    from msvision.analysis import __main__ as analysis

    return {"train.py": train_cli.main, "eval.py": eval_cli.main, "msvision.predict": predict.main,
            "msvision.export": export.main, "msvision.analysis": analysis.main}


@pytest.mark.parametrize("name", ["train.py", "eval.py", "msvision.predict", "msvision.export", "msvision.analysis"])
def test_every_entry_point_has_help_and_the_config_overrides(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _entry_points()[name](["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE[:ARG]" in out and "--config.a.b=VALUE" in out, out


def test_the_entry_points_share_one_config_parser(config_file, monkeypatch):
    """Every command reads ``--config`` and its overrides with ``config_sections.parse_args``
    and ``config_from_args``: the same resolved config from the same command line."""
    import argparse

    parser = argparse.ArgumentParser()
    config_sections.add_config_argument(parser)
    parser.add_argument("--workdir")
    args = config_sections.parse_args(parser, [f"--config={config_file}:x", "--config.seed=4", "--workdir=w",
                                               "--config.model.neck.num_layers=2"])
    assert args.workdir == "w" and args.config_overrides == ["--config.seed=4", "--config.model.neck.num_layers=2"]
    config = config_sections.config_from_args(args)
    assert config.seed == 4 and config.model.neck.num_layers == 2 and config.data.train.annotations == "x"
