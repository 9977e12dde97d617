"""The shapes world: a synthetic GenEval on 32x32 canvases of coloured circles, squares and triangles.

Prompts use GenEval's six tags and metadata format (``prompts``), ground truth comes from an
antialiased renderer (``render``), and a batched palette/connected-component detector (``detect``)
scores images GenEval's way (``score``) for evaluation tables and the ``geneval-shapes`` rewards.
"""

from pathlib import Path

from vgpo.worlds import World
from vgpo.worlds.shapes.prompts import load_prompts, vocabulary
from vgpo.worlds.shapes.renderer import IMAGE_SIZE, render
from vgpo.worlds.shapes.score import evaluate, format_table

DATA = Path(__file__).parent / "data"

WORLD = World(
    name="shapes",
    image_size=IMAGE_SIZE,
    train_file=DATA / "train.jsonl",
    test_file=DATA / "test.jsonl",
    load_prompts=load_prompts,
    render=render,
    reward="geneval-shapes",
    evaluate=evaluate,
    format_table=format_table,
    vocabulary=vocabulary,
)
