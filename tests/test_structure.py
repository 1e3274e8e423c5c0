"""The shared pieces several modules use: the batch packer, the JSONL truncation, the registries'
unknown-name error and how the CLI reports it."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from speechft.data.sampler import pack_batches
from speechft.utils.io import read_jsonl, truncate_jsonl
from speechft.utils.names import UnknownNameError, by_name, lookup


def test_pack_batches_contract():
    sizes = [1.0, 2.0, 9.0, 3.0, 3.0, 1.0]
    # batches are consecutive runs of the order; the padded size stays within the budget
    assert pack_batches([0, 1, 3, 4, 5, 2], sizes, 8.0) == [[0, 1], [3, 4], [5], [2]]
    # an item larger than the budget is a batch of its own; nothing is dropped
    assert pack_batches([2, 0], sizes, 4.0) == [[2], [0]]
    assert pack_batches([0, 5, 0, 5], sizes, 100.0, max_items=3) == [[0, 5, 0], [5]]
    assert pack_batches([], sizes, 1.0) == []
    out = pack_batches(iter([1, 0]), sizes, 10.0)
    assert out == [[1, 0]] and all(type(i) is int for b in out for i in b)


def test_truncate_jsonl_drops_later_steps_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 2.0}, {"note": "no step"}, {"step": 2}, {"step": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    truncate_jsonl(path, 2)
    assert read_jsonl(path) == rows[:3]
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows[:3])
    truncate_jsonl(tmp_path / "missing.jsonl", 0)
    assert not (tmp_path / "missing.jsonl").exists()


def test_unknown_name_error_is_a_key_and_value_error_with_a_plain_message():
    class Item:
        def __init__(self, name):
            self.name = name

    reg = by_name([Item("stable"), Item("regular")], "recipe")
    with pytest.raises(UnknownNameError) as e:
        lookup(reg, "stabel", "recipe")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert str(e.value) == "unknown recipe 'stabel'; did you mean stable?"
    with pytest.raises(ValueError, match="duplicate recipe name 'stable'"):
        from speechft.finetune.recipes import _RECIPES

        by_name([*_RECIPES, _RECIPES[0]], "recipe name")


def _cli(*args):
    from speechft.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_prints_an_unknown_name_as_one_line(tmp_path):
    res = _cli("prepare", "librispeeh", "--root", tmp_path, "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert "error: unknown corpus 'librispeeh'; did you mean librispeech?" in res.output
    assert "Traceback" not in res.output


def test_cli_shows_an_internal_key_error(tmp_path, monkeypatch):
    """A KeyError that is not an unknown name is a bug: it is not turned into 'error: ...' and exit 2."""
    from speechft.corpora import registry

    def broken(root, out_dir, **kw):
        return {}["oops"]

    monkeypatch.setitem(registry.CORPORA, "fluent", registry.CorpusRecipe("fluent", broken, True, ""))
    res = _cli("prepare", "fluent", "--root", tmp_path, "--out", tmp_path / "o")
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)
    assert not isinstance(res.exception, UnknownNameError)
    assert "error:" not in res.output
    assert res.exc_info[2] is not None  # the traceback is kept for the interpreter to print
