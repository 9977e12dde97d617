"""The ``geneval-shapes-server`` training reward: Flow-GRPO's reward-server score (exact counts, per-object
terms) on hand-made detections and on rendered scenes, beside GenEval's evaluation, which stays unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from vgpo.errors import VgpoError
from vgpo.rewards import available, build
from vgpo.worlds import get_world
from vgpo.worlds.shapes import WORLD
from vgpo.worlds.shapes.detect import Detection
from vgpo.worlds.shapes.prompts import phrase
from vgpo.worlds.shapes.score import constraints, evaluate, score, server_score, server_terms


def meta(tag: str, *include: dict, exclude: list[dict] | None = None) -> dict:
    record = {"tag": tag, "include": list(include), **({"exclude": exclude} if exclude else {})}
    return {**record, "prompt": phrase(record)}


def obj(cls: str, count: int = 1, **extra) -> dict:
    return {"class": cls, "count": count, **extra}


def det(cls: str, color: str, x: float, y: float, side: int = 8) -> Detection:
    half = side // 2
    box = (int(x) - half, int(y) - half, int(x) - half + side, int(y) - half + side)
    return Detection(cls, color, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), box, float(side * side))


COLOR_ATTR = meta("color_attr", obj("circle", color="red"), obj("square", color="blue"))
# "a photo of a square left of a circle": the square (include 1) is left of the circle (include 0).
POSITION = meta("position", obj("circle"), obj("square", position=["left of", 0]))


def server_value(images: torch.Tensor, metas: list[dict]) -> torch.Tensor:
    return build("geneval-shapes-server")(images, [m["prompt"] for m in metas], metas)


# --- hand-made detections: every term computed by hand ------------------------------------------------


def test_exact_scene_scores_one():
    terms, exact = server_terms([det("circle", "red", 8, 16), det("square", "blue", 24, 16)], COLOR_ATTR)
    assert terms == [1.0, 1.0, 1.0, 1.0] and exact
    terms, exact = server_terms([det("circle", "green", 24, 16), det("square", "red", 6, 16)], POSITION)
    assert terms == [1.0, 1.0, 1.0] and exact


def test_extra_object_costs_the_count_term_and_zeroes_the_colour_term():
    found = [det("circle", "red", 6, 8), det("circle", "red", 6, 24), det("square", "blue", 24, 16)]
    assert server_terms(found, COLOR_ATTR) == ([0.0, 0.0, 1.0, 1.0], False)
    assert constraints(found, COLOR_ATTR) == [True, True, True, True]  # GenEval: counts are minimums


def test_wrong_count_zeroes_the_position_term_without_checking_it():
    # Two squares, both left of the circle: the relation holds, the count does not.
    found = [det("circle", "red", 24, 16), det("square", "red", 6, 6), det("square", "red", 6, 26)]
    assert server_terms(found, POSITION) == ([1.0, 0.0, 0.0], False)
    assert all(constraints(found, POSITION))


def test_count_term_is_unclipped_and_excludes_add_no_term():
    three = [det("circle", "red", 6, 6), det("circle", "red", 26, 6), det("circle", "red", 16, 26)]
    assert server_terms(three, meta("single_object", obj("circle"))) == ([-1.0], False)
    two_circles = meta("counting", obj("circle", 2), exclude=[obj("circle", 3)])
    assert server_terms(three, two_circles) == ([0.5], False)  # 1 - |2 - 3| / 2; the exclude scores nothing
    assert constraints(three, two_circles) == [True, False]
    # Objects of a class the prompt does not name cost nothing.
    assert server_terms(three + [det("square", "blue", 16, 16)], meta("single_object", obj("square"))) == ([1.0], True)


def test_colour_term_is_the_fraction_of_objects_in_the_colour():
    two_red = meta("colors", obj("circle", 2, color="red"))
    assert server_terms([det("circle", "red", 6, 16), det("circle", "blue", 24, 16)], two_red) == ([1.0, 0.5], False)


def test_position_terms_as_the_server_appends_them():
    # A wrong relation: the failing pair's 0, then the server's trailing 1.
    right_of = [det("circle", "red", 6, 16), det("square", "blue", 24, 16)]
    terms, exact = server_terms(right_of, POSITION)
    assert terms == [1.0, 1.0, 0.0, 1.0] and not exact and sum(terms) / len(terms) == 0.75
    # A missing anchor: the circle's count term is 0 and the square's position term 0.
    assert server_terms([det("square", "blue", 24, 16)], POSITION) == ([0.0, 1.0, 0.0], False)
    # A wrong colour: the position after it is not scored.
    positioned_red = meta("position", obj("circle"), obj("square", color="red", position=["left of", 0]))
    assert server_terms([det("circle", "red", 24, 16), det("square", "blue", 6, 16)], positioned_red) == (
        [1.0, 1.0, 0.0],
        False,
    )


# --- rendered scenes ------------------------------------------------------------------------------------


def test_registered_and_one_on_every_exact_render():
    assert "geneval-shapes-server" in available()
    metas = list(
        {m["prompt"]: m for m in WORLD.load_prompts(WORLD.train_file) + WORLD.load_prompts(WORLD.test_file)}.values()
    )
    images = torch.stack([WORLD.render(m, i) for i, m in enumerate(metas)])
    value = server_value(images, metas)
    assert value.shape == (len(metas),) and value.dtype == torch.float32 and value.device.type == "cpu"
    assert (value == 1).all() and (server_score(images, metas)[0] == 1).all()


# Seeds at which the renderer's rejection sampling fits two squares left of a circle inside the cone.
@pytest.mark.parametrize("seed", [3, 8])
def test_rendered_extra_object_lowers_it_while_evaluation_still_passes(seed):
    # The scene asked for plus one more object of an included class: GenEval's evaluation (minimum counts)
    # still passes it, the server reward does not.
    asked = [
        COLOR_ATTR,
        POSITION,
        meta("two_object", obj("triangle"), obj("square")),
        meta("colors", obj("triangle", color="green")),
    ]
    drawn = [
        meta("color_attr", obj("circle", 2, color="red"), obj("square", color="blue")),
        meta("position", obj("circle"), obj("square", 2, position=["left of", 0])),
        meta("two_object", obj("triangle", 2), obj("square")),
        meta("colors", obj("triangle", 2, color="green")),
    ]
    images = torch.stack([WORLD.render(m, seed) for m in drawn])
    exact_images = torch.stack([WORLD.render(m, seed) for m in asked])
    assert server_value(exact_images, asked).tolist() == [1.0] * 4
    # By hand: [0, 0 | 1, 1], [1 | 0, 0 (position zeroed)], [0 | 1], [0, 0 (colour zeroed)].
    assert server_value(images, asked).tolist() == pytest.approx([0.5, 1 / 3, 0.5, 0.0])
    strict, partial = score(images, asked)
    assert strict.tolist() == [1.0] * 4 and partial.tolist() == [1.0] * 4
    prompts = [m["prompt"] for m in asked]
    assert build("geneval-shapes-strict")(images, prompts, asked).tolist() == [1.0] * 4
    # The binary exact-scene reward: 1 on the scenes asked for, 0 once one object too many is drawn.
    assert build("geneval-shapes-exact")(exact_images, prompts, asked).tolist() == [1.0] * 4
    assert build("geneval-shapes-exact")(images, prompts, asked).tolist() == [0.0] * 4


def test_rendered_wrong_count_zeroes_colour_term():
    # "one red circle and one blue square" drawn with two blue squares.
    drawn = meta("color_attr", obj("circle", color="red"), obj("square", 2, color="blue"))
    images = torch.stack([WORLD.render(drawn, s) for s in range(3)])
    assert server_value(images, [COLOR_ATTR] * 3).tolist() == pytest.approx([0.5] * 3)  # [1, 1 | 0, 0]
    assert build("geneval-shapes-exact")(images, [COLOR_ATTR["prompt"]] * 3, [COLOR_ATTR] * 3).tolist() == [0.0] * 3


def test_evaluation_keeps_genevals_semantics():
    assert WORLD.evaluate is evaluate and WORLD.reward == "geneval-shapes"
    counting = meta("counting", obj("circle", 2), exclude=[obj("circle", 3)])
    drawn = [
        meta("color_attr", obj("circle", 2, color="red"), obj("square", color="blue")),
        meta("counting", obj("circle", 3)),
    ]
    images = torch.stack([WORLD.render(m, 0) for m in drawn])
    metrics = WORLD.evaluate(images, [COLOR_ATTR, counting])
    # Extra objects pass GenEval's color_attr check (minimum counts); counting's exclude still fails a third circle.
    assert metrics["color_attr/strict"] == 1.0 and metrics["counting/strict"] == 0.0
    assert server_value(images, [COLOR_ATTR, counting]).tolist() == pytest.approx([0.5, 0.5])


def test_strict_standard_error_is_the_binomial_one():
    from vgpo.worlds.shapes.score import strict_standard_error

    metrics = {"counting/strict": 0.5, "counting/n": 40, "colors/strict": 0.9, "colors/n": 50}
    expected = math.sqrt(0.5 * 0.5 / 40 + 0.9 * 0.1 / 50) / 2
    assert strict_standard_error(metrics) == pytest.approx(expected, rel=1e-12)
    assert strict_standard_error({"colors/strict": 1.0, "colors/n": 47}) == 0.0
    assert get_world("shapes").headline_standard_error(metrics) == strict_standard_error(metrics)
    with pytest.raises(VgpoError, match="geneval.*no standard error"):
        get_world("geneval").headline_standard_error(metrics)


def test_evaluation_monitors_the_extra_objects_its_minimum_counts_let_pass():
    """The hacking monitor beside GenEval's score: a duplicated object passes the strict score but shows
    as an extra object, and the scene is no longer exactly as asked."""
    exact = meta("color_attr", obj("circle", color="red"), obj("square", color="blue"))
    duplicated = meta("color_attr", obj("circle", 2, color="red"), obj("square", color="blue"))
    images = torch.stack([WORLD.render(exact, 0), WORLD.render(duplicated, 0)])
    both = evaluate(images, [COLOR_ATTR, COLOR_ATTR])
    assert both["color_attr/strict"] == 1.0
    assert both["monitor/extra_objects"] == 0.5 and both["monitor/exact_scene"] == 0.5
    alone = evaluate(images[:1], [COLOR_ATTR])
    assert (alone["monitor/extra_objects"], alone["monitor/exact_scene"]) == (0.0, 1.0)
    assert "beyond those asked for" in WORLD.format_table(both)
