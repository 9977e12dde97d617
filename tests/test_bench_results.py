"""The results document as dataclasses: the shipped results load and round-trip, loading names the path
of a departure, and the committed schema document is the rendering of the classes."""

import copy
import json
from pathlib import Path

import pytest

from vgpo.bench.results import Results, load, render_schema_doc
from vgpo.bench.schema import validate
from vgpo.errors import VgpoError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def _shipped(suite: str) -> dict:
    return json.loads((DOCS / suite / "results.json").read_text())


def test_committed_schema_document_is_the_rendering_of_the_classes():
    text = (DOCS / "SCHEMA.md").read_text()
    assert render_schema_doc(text) == text, "run: python -m vgpo.bench.results docs/benchmarks/SCHEMA.md"


def test_full_results_load_and_serialise_back_to_the_same_json():
    data = _shipped("full")
    results = load(Results, data)
    assert results.tasks["shapes"].algorithms["vgpo"].final["overall/strict"].n == 3
    assert results.to_dict() == data
    assert validate(data) == []


def test_quick_results_written_before_jobs_rebuilt_and_gain_load_with_those_as_null():
    data = _shipped("quick")
    assert "jobs" not in data and "gain_over_base" not in data["tasks"]["shapes"]["algorithms"]["grpo"]
    results = load(Results, data)
    assert results.jobs is None and results.rebuilt is None
    assert results.tasks["shapes"].algorithms["grpo"].gain_over_base is None
    back = results.to_dict()
    assert back["jobs"] is None and back["rebuilt"] is None
    for task in back["tasks"].values():
        for name, algo in task["algorithms"].items():
            assert algo.pop("gain_over_base") is None, name
    back.pop("jobs"), back.pop("rebuilt")
    assert back == data
    assert validate(data) == []


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d["runs"][0].pop("seed"), r"^\$\.runs\[0\]: missing key 'seed'$"),
        (lambda d: d["runs"][0].update(extra=1), r"^\$\.runs\[0\]: unknown key 'extra'$"),
        (lambda d: d["runs"][0].update(seed=1.5), r"^\$\.runs\[0\]\.seed: expected an integer"),
        (lambda d: d["runs"][0].update(status="half"), r"^\$\.runs\[0\]\.status: 'half' not one of"),
        (
            lambda d: d["tasks"]["shapes"]["base"]["eval"]["overall/strict"].update(mean="x"),
            r"^\$\.tasks\.shapes\.base\.eval\.overall/strict\.mean: expected a number",
        ),
    ],
)
def test_load_names_the_path_of_a_departure(edit, message):
    data = copy.deepcopy(_shipped("full"))
    edit(data)
    with pytest.raises(VgpoError, match=message):
        load(Results, data)
    assert validate(data) != [] or "unknown" in message  # the spec allows extra keys; load does not
