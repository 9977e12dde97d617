"""Every shipped preset loads and validates; the SD3.5-M presets carry Flow-GRPO's published
hyperparameters; the prompt-file worlds they use read GenEval JSONL and plain-text prompts."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from vgpo.config import from_dict, load_yaml
from vgpo.errors import VgpoError
from vgpo.rewards import available
from vgpo.train import TrainConfig
from vgpo.worlds import get_world

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
TASKS = {"geneval": ("geneval-remote", 0.04), "ocr": ("ocr", 0.04), "pickscore": ("pickscore", 0.01)}
SD35M = [(task, algo) for task in TASKS for algo in ("grpo", "vgpo")]


def load(path: Path) -> TrainConfig:
    return from_dict(TrainConfig, load_yaml(path), f"{path.name}: ")


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_and_validates(path):
    cfg = load(path)
    world = get_world(cfg.world)
    spec = cfg.reward_spec(world.reward)
    assert all(name in available() for name in ([spec] if isinstance(spec, str) else spec))


def test_all_sd35m_presets_are_shipped():
    names = {p.name for p in PRESETS}
    assert {f"sd35m-{task}-{algo}.yaml" for task, algo in SD35M} <= names


@pytest.mark.parametrize("task, algo", SD35M)
def test_sd35m_presets_use_flow_grpo_hyperparameters(task, algo):
    cfg = load(CONFIGS / f"sd35m-{task}-{algo}.yaml")
    reward, beta = TASKS[task]
    assert (cfg.model, cfg.world, cfg.algorithm, cfg.beta) == ("sd3", task, algo, beta)
    assert list(cfg.reward) == [reward]
    opts = cfg.model_options
    assert opts["resolution"] == 512 and opts["lora"] == {"rank": 32, "alpha": 64}
    assert (cfg.num_steps, cfg.eval_num_steps, cfg.group_size, cfg.noise_level) == (10, 40, 24, 0.7)
    assert (cfg.clip_range, cfg.adv_clip_max, cfg.lr, cfg.guidance_scale) == (1e-4, 5.0, 3e-4, 4.5)
    # 48 groups x 24 images per epoch, 2 optimizer steps, on the 8 processes the presets assume.
    assert cfg.prompts_per_epoch * cfg.group_size == 1152
    assert cfg.prompts_per_epoch * cfg.group_size // 8 == 2 * cfg.train_batch_size * cfg.gradient_accumulation
    if task == "pickscore":
        assert cfg.reward["pickscore"]["divide_by"] == 26
    if task == "geneval":
        assert cfg.reward["geneval-remote"]["url"].startswith("http")


@pytest.mark.parametrize("task", TASKS)
def test_grpo_and_vgpo_presets_differ_only_in_the_algorithm(task):
    grpo = load_yaml(CONFIGS / f"sd35m-{task}-grpo.yaml")
    vgpo = load_yaml(CONFIGS / f"sd35m-{task}-vgpo.yaml")
    algorithm_keys = {"algorithm", "out", "gamma", "tcrm_every", "adae_k", "adae_steps", "drop_zero_std_groups"}
    differ = {k for k in grpo.keys() | vgpo.keys() if grpo.get(k) != vgpo.get(k)}
    assert differ <= algorithm_keys, differ - algorithm_keys


def test_sd35m_model_and_reward_options_are_accepted():
    """The options reach SD3FlowModel.from_pretrained / the reward factories without a TypeError
    (checked on the signatures: the real weights are not available here)."""
    pytest.importorskip("diffusers")
    from vgpo.models.lora import LoraOptions
    from vgpo.models.sd3 import SD3FlowModel
    from vgpo.rewards import _factory, _option_names

    accepted = set(inspect.signature(SD3FlowModel.from_pretrained).parameters)
    accepted |= set(inspect.signature(SD3FlowModel.__init__).parameters)
    for task, algo in SD35M:
        cfg = load(CONFIGS / f"sd35m-{task}-{algo}.yaml")
        assert set(cfg.model_options) <= accepted
        assert LoraOptions.from_spec(cfg.model_options["lora"]).rank == 32
        for name, options in cfg.reward.items():
            assert set(options) - {"weight"} <= set(_option_names(_factory(name))), name


def test_accelerate_configs_parse():
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import ClusterConfig

    paths = sorted((CONFIGS / "accelerate").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = ClusterConfig.from_yaml_file(str(path))
        assert str(cfg.distributed_type).endswith("MULTI_GPU") and cfg.num_processes >= 2


# --- prompt-file worlds ----------------------------------------------------------------------------
def test_geneval_world_reads_geneval_jsonl(tmp_path):
    rows = [
        {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
        {
            "tag": "counting",
            "include": [{"class": "dog", "count": 2}],
            "exclude": [{"class": "dog", "count": 3}],
            "prompt": "a photo of two dogs",
        },
    ]
    path = tmp_path / "test_metadata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    world = get_world("geneval")
    assert world.load_prompts(path) == rows  # metadata passed through as given (for the GenEval server)
    assert world.reward == "geneval-remote" and world.headline == "reward/mean"
    assert world.train_file == Path("dataset/geneval/train_metadata.jsonl")


@pytest.mark.parametrize("name, reward", [("ocr", "ocr"), ("pickscore", "pickscore")])
def test_text_prompt_worlds(tmp_path, name, reward):
    path = tmp_path / "train.txt"
    path.write_text('A sign that says "Hello"\n\n  a cat wearing a hat  \n')
    world = get_world(name)
    assert world.load_prompts(path) == [{"prompt": 'A sign that says "Hello"'}, {"prompt": "a cat wearing a hat"}]
    assert world.reward == reward
    assert world.evaluate(torch.zeros(3, 3, 8, 8), [{}] * 3) == {"n": 3}
    assert "n" in world.format_table({"n": 3, "reward/mean": 0.5})


def test_prompt_file_world_errors(tmp_path):
    world = get_world("geneval")
    with pytest.raises(VgpoError, match="no renderer"):
        world.render({"prompt": "a cat"}, 0)
    with pytest.raises(VgpoError, match="vocabulary"):
        world.vocabulary()
    with pytest.raises(VgpoError, match="not found.*train_prompts"):
        world.load_prompts(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a cat"}\n{"tag": "x"}\n')
    with pytest.raises(VgpoError, match=r"bad.jsonl:2: .*\"prompt\""):
        world.load_prompts(bad)
    bad.write_text('{"prompt": "a cat"\n')
    with pytest.raises(VgpoError, match=r"bad.jsonl:1: invalid JSON"):
        world.load_prompts(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(VgpoError, match="no prompts"):
        get_world("ocr").load_prompts(empty)


# --- the composition presets (sampler + advantage + objective) --------------------------------------
COMPOSED = {
    "shapes-nft.yaml": "ode+nft",
    "shapes-nft-vgpo.yaml": "ode+nft+tcrm+adae",
    "shapes-awm.yaml": "ode+awm",
    "shapes-awm-vgpo.yaml": "ode+awm+tcrm+adae",
    "text-nft.yaml": "ode+nft",
    "text-nft-vgpo.yaml": "ode+nft+tcrm+adae",
    "text-awm.yaml": "ode+awm",
    "text-awm-vgpo.yaml": "ode+awm+tcrm+adae",
    "shapes-cps-grpo.yaml": "cps+ppo",
    "shapes-cps-vgpo.yaml": "cps+ppo+tcrm+adae",
}


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_composed_presets_name_their_parts(name):
    from vgpo.train.algorithms import describe

    cfg = load(CONFIGS / name)
    assert describe(cfg.parts) == COMPOSED[name]
    # No CFG in rollouts or training (the papers' and Flow-GRPO's CPS recipe), CFG in held-out evaluation.
    assert (cfg.guidance_scale, cfg.eval_guidance) == (1.0, 4.5)
    if cfg.parts.sampler == "cps":  # Flow-GRPO's CPS recommendations
        assert cfg.noise_level == 0.8 and 0 < cfg.sde_steps <= cfg.num_steps // 2
        assert cfg.clip_range < load(CONFIGS / "shapes-grpo.yaml").clip_range
    # The composed presets change only their algorithm's parts and settings, not the world's recipe.
    world = "shapes" if name.startswith("shapes") else "text"
    reference = load(CONFIGS / f"{world}-grpo.yaml")
    for key in ("lr", "num_steps", "group_size", "prompts_per_epoch", "train_batch_size", "epochs", "reward"):
        assert getattr(cfg, key) == getattr(reference, key), key


@pytest.mark.parametrize("name", ["shapes-nft-vgpo.yaml", "shapes-awm.yaml", "shapes-cps-vgpo.yaml"])
def test_composed_presets_run_an_epoch_on_a_tiny_model(tmp_path, tiny_checkpoint, name):
    from vgpo.train import train

    data = {
        **load_yaml(CONFIGS / name),
        "checkpoint": str(tiny_checkpoint),
        "out": str(tmp_path / "run"),
        "epochs": 1,
        "prompts_per_epoch": 2,
        "group_size": 4,
        "sample_batch_size": 8,
        "train_batch_size": 8,
        "num_steps": 6,
        "eval_base": False,
        "eval_num_steps": 2,
        "eval_limit": 2,
        "reward": "brightness",
        "threads": 1,
    }
    out = train(from_dict(TrainConfig, data, f"{name}: "))
    (m,) = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if "losses/grad_norm" in ln]
    assert m["losses/grad_norm"] > 0 and m["charts/optimizer_steps"] == 1


def test_demo_preset_trains_from_a_shipped_base_on_the_train_split():
    """The demo's checkpoint is shipped, and it trains and evaluates on the world's own splits (its
    recipe was chosen on val, its score is read on test)."""
    cfg = load(CONFIGS / "shapes-vgpo-demo.yaml")
    root = CONFIGS.parent
    assert (root / cfg.checkpoint / "model.safetensors").is_file()
    assert cfg.train_prompts == "" and cfg.test_prompts == ""
    assert (cfg.eval_num_steps, cfg.eval_every) == (40, 0)


def test_demo_base_records_what_its_pretraining_saw():
    """The README states what the demo's base saw: every composition under web-like captions, at each link of
    its chain of --init fine-tunes (relation-attention <- grounded <- web), each run to its last step."""
    root = CONFIGS.parent
    chain, folder = [], load(CONFIGS / "shapes-vgpo-demo.yaml").checkpoint
    while folder:
        meta = json.loads((root / folder / "config.json").read_text())
        assert meta["arch"]["text_encoder"] == "ordered"
        assert (meta["pretrain"]["prompts"], meta["pretrain"]["caption_noise"]) == ("all", "web")
        assert meta["pretrain"]["completed_steps"] == meta["pretrain"]["steps"]
        chain.append(Path(folder).name)
        folder = meta["pretrain"].get("init")
    assert chain == ["shapes-base-relation-attention", "shapes-base-grounded", "shapes-base-web"]
