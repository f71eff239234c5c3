"""``benchmarks/mask_head_variants.py``: variants are parsed as Python literals and checked
against the head's fields before any checkpoint is read."""

import os

import pytest

from benchmark_modules import ROOT, load_benchmark

variants = load_benchmark("mask_head_variants")


def test_values_are_literals_and_tuples_keep_their_commas():
    name, fields = variants.parse_variant("per stage: selected_per_roi=(100, 150, 300), max_selected=30000, "
                                          "processing='conv'")
    assert name == "per stage"
    assert fields == {"selected_per_roi": (100, 150, 300), "max_selected": 30000, "processing": "conv"}
    assert variants.parse_variant("as is:") == ("as is", {})


@pytest.mark.parametrize("text", ["no colon", ": a=1", "x: a=b", "x: 3", "x: a=(1,"])
def test_malformed_variants_are_refused(text):
    with pytest.raises(ValueError, match="variant|name: key=value"):
        variants.parse_variant(text)


def test_a_field_the_head_does_not_have_is_refused_by_name(capsys, tmp_path):
    config = os.path.join(ROOT, "configs", "effseg", "large_pointrend.py")
    with pytest.raises(SystemExit):
        variants.main([f"--config={config}", f"--workdir={tmp_path}", "--variant", "x: subdivison_steps=1"])
    assert "has no field subdivison_steps" in capsys.readouterr().err
