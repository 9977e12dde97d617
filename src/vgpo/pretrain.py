"""Pretraining of the tiny model on a world's renders with the rectified-flow loss.

Loss: || v(x_t, t, text) - (noise - x0) ||^2 with x_t = (1-t)*x0 + t*noise and logit-normal t (SD3),
prompt dropout for classifier-free guidance, AdamW with linear warm-up, EMA weights (what is saved as
``model.safetensors``). Every batch is a pure function of (seed, step), so a resumed run continues
exactly where the killed one stopped; ``resume.pt`` (raw weights, EMA, optimizer, step) and the
checkpoint files are written atomically.

What is rendered: a prompt split (``prompts``: train by default), or the world's whole composition space
(``prompts: all``, test compositions included, as web data would hold them); ``caption_noise`` trains on
captions that misdescribe their render at set rates (each world's ``WEB_CAPTION_NOISE``), so the base can
draw every composition but follows prompts imperfectly, the regime RL is meant for.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vgpo.config import check_fields, doc, same_as_written, to_dict
from vgpo.errors import VgpoError
from vgpo.models.text_encoder import ContextHead
from vgpo.models.tiny import TINY_PRECISIONS, AttnBlock, TinyConfig, TinyFlowModel
from vgpo.train.fm_losses import fm_interpolate
from vgpo.train.guards import check_step
from vgpo.utils import append_line, atomic_torch_save, atomic_write_text, derive_seed, load_torch
from vgpo.worlds import SPLITS, World, balanced_choice, get_world

if TYPE_CHECKING:  # (pretrain_ae imports this module)
    from vgpo.pretrain_ae import AutoencoderTrainConfig

#: What resume files written before the prompts/caption_noise options were trained on.
_OLD_DATA = {"prompts": "train", "caption_noise": {}}
#: The objective of resume files written before the text-context and binding-contrast losses existed.
_OLD_OBJECTIVE = {
    "text_context_loss": 0.0,
    "text_context_window": 0,
    "binding_contrast": 0.0,
    "binding_contrast_temperature": 0.0,
    "grounding_loss": 0.0,
    "relation_loss": 0.0,
    "relation_margin": 0.0,
    "relation_min_t": 0.0,
    "relation_batch": 0,
    "relation_warmup_steps": 0,
    "relation_warmup_trains": "all",
    "relation_trains": "all",
    "relation_decay_steps": 0,
    "grounding_scenes": "multi",
}

#: What ``grounding_scenes`` may name: the scenes the grounding loss reads.
GROUNDING_SCENES = ("multi", "all")
#: What ``relation_warmup_trains`` and ``relation_trains`` may name: weights the relation term moves.
RELATION_SCOPES = ("all", "attention", "attention+text")


#: The auxiliary losses' log.jsonl columns, when on.
_LOGGED_LOSSES = (
    "binding",
    "binding_accuracy",
    "grounding",
    "grounding_inside",
    "relation",
    "relation_projection",
    "relation_weight",
)


@dataclass
class PretrainConfig:
    world: str = doc("shapes", "world to render training images from (shapes, text)")
    prompts: str = doc(
        "train",
        "what to render: a split name (train, train_minus_val, ...), 'all' (the world's whole composition "
        "space, test compositions included, as web data would be), or a prompt file",
    )
    caption_noise: dict[str, float] | str = doc(
        {},
        "caption corruption rates (shapes: {relation, color, count, omit}; text: {swap, letter, drop}; 'web': "
        "the world's WEB_CAPTION_NOISE); empty: exact captions",
    )
    out: str = doc("runs/pretrain-shapes", "output folder: model.safetensors, config.json, resume.pt, log.jsonl")
    steps: int = doc(1200, "optimizer steps")
    batch_size: int = doc(64, "images per step")
    lr: float = doc(1e-3, "peak AdamW learning rate")
    warmup_steps: int = doc(100, "linear learning-rate warm-up")
    cooldown_steps: int = doc(
        0,
        "linear decay of the learning rate to 0 over the last N steps (warmup-stable-decay); 0: constant after "
        "warm-up. Only the last N steps depend on `steps`, so a run resumed with more steps and a cooldown "
        "matches one trained straight",
    )
    weight_decay: float = doc(0.0, "AdamW weight decay")
    ema_decay: float = doc(0.995, "EMA decay of the saved weights (warmed up as min(decay, (1+n)/(10+n)))")
    prompt_dropout: float = doc(0.1, "probability of training on the empty prompt (CFG's unconditional model)")
    logit_normal_mean: float = doc(0.0, "mean of logit(t) for timestep sampling (SD3: 0)")
    logit_normal_std: float = doc(1.0, "std of logit(t) for timestep sampling (SD3: 1)")
    channels: list[int] = doc([32, 64, 128], "U-Net widths at full, 1/2 and 1/4 resolution")
    shift: float = doc(3.0, "schedule shift stored with the model (SD3.5-M uses 3)")
    text_encoder: str = doc("mean", "text encoder: mean (the shipped bases) or ordered (keeps word order)")
    latent: str = doc("", "autoencoder folder (`vgpo pretrain-ae`) to work in its latent space; empty: pixels")
    film_text: bool = doc(
        True, "pooled prompt in the U-Net's FiLM (the shipped bases); false: the prompt enters by cross-attention only"
    )
    full_res_cross_attention: bool = doc(
        False, "cross-attention to the prompt also at full resolution (no self-attention there); shipped bases: false"
    )
    query_positions: bool = doc(
        False,
        "fixed 2-D positions added to the U-Net's cross-attention queries through a zero-initialised map, so where "
        "a word is read can depend on where a pixel is (for the relation loss); an --init base without them starts "
        "at zero, the same function; shipped bases: false",
    )
    query_positions_lr: float = doc(
        3e-3,
        "peak learning rate of the query-position maps (same warm-up and cooldown as lr): they start at zero, so "
        "a base grown into them learns them from scratch while the rest of the network fine-tunes at lr",
    )
    backbone: str = doc("unet", "denoising network: unet (the shipped bases) or dit (SD3's joint-attention MM-DiT)")
    dit_width: int = doc(256, "DiT token width (backbone dit)")
    dit_depth: int = doc(6, "DiT joint blocks (backbone dit)")
    dit_patch: int = doc(1, "DiT square patch side, in latent (or pixel) units (backbone dit)")
    text_context_loss: float = doc(
        0.0,
        "weight of an auxiliary loss by which each prompt token predicts the words around it (ContextHead: "
        "text only, so nouns carry their own attributes); 0: flow loss only (the shipped bases)",
    )
    text_context_window: int = doc(3, "offsets each side that the text-context loss predicts")
    binding_contrast: float = doc(
        0.0,
        "weight of the binding-contrast loss: on every scene whose binding the world can exchange (shapes: "
        "color_attr's colours swapped, position's relation reversed), the denoising error with the exact "
        "caption is pushed below the error with the exchanged one, T*softplus((mse_exact - mse_swapped)/T) "
        "(a diffusion classifier's logistic loss, in MSE units); 0: flow loss only (the shipped bases)",
    )
    binding_contrast_temperature: float = doc(
        1e-3, "T of the binding-contrast loss: the error margin, in MSE units, beyond which it stops pushing"
    )
    grounding_loss: float = doc(
        0.0,
        "weight of a grounding loss on the U-Net's cross-attention (TokenCompose, Wang et al. 2024): on scenes "
        "of two or more objects, each object's colour and class tokens should draw their attention from the "
        "pixels that object covers, (1 - inside fraction)^2 averaged over tokens and attention blocks; 0: "
        "off (the shipped bases)",
    )
    grounding_scenes: str = doc(
        "multi",
        "scenes the grounding loss reads: 'multi', those naming two or more objects (where words must be told "
        "apart; every shipped base); 'all', single-object scenes too (colors, single_object and counting "
        "prompts), whose colour and class words then learn to draw from their object's pixels as well",
    )
    relation_loss: float = doc(
        0.0,
        "weight of a relation term on the same cross-attention: on scenes whose prompt states a relation "
        "(shapes: position), the centroid of the subject's word attention minus the target's, projected on "
        "the relation's direction, should reach relation_margin; relu(margin - projection) averaged over "
        "relations and attention blocks; 0: off",
    )
    relation_margin: float = doc(
        0.3,
        "the relation loss's margin, in canvas widths (centroids are in 0..1 across the canvas; the renderer "
        "sets related objects at least 9 of 32 pixels apart)",
    )
    relation_warmup_steps: int = doc(
        0,
        "first steps that train the relation loss alone (every weight, no flow or grounding loss): beside the flow "
        "loss it did not move in 400 steps from a base without it; alone it jumps to the margin after some 80-190 "
        "steps, and the full objective then keeps it and repairs what it moved (docs/learning-study.md, section 28)",
    )
    relation_warmup_trains: str = doc(
        "all",
        "weights the relation warm-up trains: all; 'attention' (each cross-attention block's query/key path: "
        "norm2, q, kv, q_pos, where the relation loss reads); 'attention+text' (those and the text encoder). The "
        "rest keep their values through the warm-up: from the grounded base an attention-only warm-up kept its "
        "colour binding, which the all-weights one cost (docs/learning-study.md, section 31)",
    )
    relation_trains: str = doc(
        "all",
        "weights the relation term's gradient reaches after the warm-up (the scopes of relation_warmup_trains); "
        "the flow and grounding losses train every weight. With the term on every weight the colours tag read "
        "0.77 on training prompts, 0.94 without it; on the attention alone the relation did not hold "
        "(position 0.56; docs/learning-study.md, section 31)",
    )
    relation_decay_steps: int = doc(
        0,
        "steps after the warm-up over which the relation term's weight falls linearly from relation_loss to 0; "
        "after them the term is off and its batch is not drawn. 0: the weight stays. At a constant weight the "
        "term cost the colours tag (0.77 at 1, 0.90 at 0.1, 0.94 without it; docs/learning-study.md, section 33)",
    )
    relation_batch: int = doc(
        32, "scenes stating a relation that the relation loss renders each step, beside the batch"
    )
    relation_min_t: float = doc(
        0.7, "the relation loss's noise levels are drawn uniformly from [relation_min_t, 1], where layout is decided"
    )
    init: str = doc(
        "",
        "checkpoint folder whose weights the run starts from (fine-tuning; its architecture must be the one the "
        "other fields build); empty: random initialisation",
    )
    seed: int = doc(0, "seed of initialisation and of every batch")
    save_every: int = doc(100, "steps between checkpoints")
    grad_clip: float = doc(1.0, "gradient-norm clip")
    threads: int = doc(0, "torch CPU threads (0: torch's default)")
    precision: str = doc(
        "fp32", "network forward/backward: fp32 (the shipped bases), bf16 (autocast; weights, loss, EMA float32), auto"
    )

    def __post_init__(self) -> None:
        check_fields(self)  # every float finite
        for name in ("steps", "batch_size", "save_every", "relation_batch"):
            if getattr(self, name) < 1:
                raise VgpoError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not 0 <= self.cooldown_steps <= self.steps:
            raise VgpoError(f"cooldown_steps: expected in [0, steps={self.steps}], got {self.cooldown_steps}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise VgpoError(f"prompt_dropout: expected in [0, 1), got {self.prompt_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise VgpoError(f"ema_decay: expected in [0, 1), got {self.ema_decay}")
        for name in ("lr", "query_positions_lr"):
            if getattr(self, name) <= 0:
                raise VgpoError(f"{name}: expected > 0, got {getattr(self, name)}")
        if self.text_context_loss < 0:
            raise VgpoError(f"text_context_loss: expected >= 0, got {self.text_context_loss}")
        if self.text_context_window < 1:
            raise VgpoError(f"text_context_window: expected >= 1, got {self.text_context_window}")
        if self.binding_contrast < 0:
            raise VgpoError(f"binding_contrast: expected >= 0, got {self.binding_contrast}")
        for name in ("grounding_loss", "relation_loss"):
            if getattr(self, name) < 0:
                raise VgpoError(f"{name}: expected >= 0, got {getattr(self, name)}")
            if getattr(self, name) and self.backbone != "unet":
                raise VgpoError(f"{name}: needs the unet backbone's cross-attention, not {self.backbone!r}")
        if self.grounding_scenes not in GROUNDING_SCENES:
            choices = ", ".join(GROUNDING_SCENES)
            raise VgpoError(f"grounding_scenes: expected one of {choices}, got {self.grounding_scenes!r}")
        if self.grounding_scenes != "multi" and not self.grounding_loss:
            raise VgpoError("grounding_scenes: chooses the grounding loss's scenes; set grounding_loss > 0")
        if not 0 <= self.relation_warmup_steps <= self.steps:
            raise VgpoError(
                f"relation_warmup_steps: expected in [0, steps={self.steps}], got {self.relation_warmup_steps}"
            )
        if self.relation_warmup_steps and not self.relation_loss:
            raise VgpoError("relation_warmup_steps: warms up the relation loss; set relation_loss > 0")
        for name in ("relation_warmup_trains", "relation_trains"):
            if getattr(self, name) not in RELATION_SCOPES:
                scopes, got = ", ".join(RELATION_SCOPES), getattr(self, name)
                raise VgpoError(f"{name}: expected one of {scopes}, got {got!r}")
        if self.relation_trains != "all" and not self.relation_loss:
            raise VgpoError("relation_trains: scopes the relation term; set relation_loss > 0")
        if self.relation_decay_steps < 0:
            raise VgpoError(f"relation_decay_steps: expected >= 0, got {self.relation_decay_steps}")
        if self.relation_decay_steps and not self.relation_loss:
            raise VgpoError("relation_decay_steps: decays the relation loss; set relation_loss > 0")
        if self.relation_warmup_trains != "all" and not self.relation_warmup_steps:
            raise VgpoError("relation_warmup_trains: restricts the warm-up; set relation_warmup_steps > 0")
        if not 0 <= self.relation_min_t < 1:
            raise VgpoError(f"relation_min_t: expected in [0, 1), got {self.relation_min_t}")
        if not 0 < self.relation_margin <= 1:
            raise VgpoError(f"relation_margin: expected in (0, 1], got {self.relation_margin}")
        if self.binding_contrast_temperature <= 0:
            raise VgpoError(f"binding_contrast_temperature: expected > 0, got {self.binding_contrast_temperature}")
        if self.precision not in TINY_PRECISIONS:
            raise VgpoError(f"precision: expected one of {', '.join(TINY_PRECISIONS)}, got {self.precision!r}")
        if len(self.channels) != 3:
            raise VgpoError(f"channels: expected 3 widths, got {self.channels}")
        if not isinstance(self.caption_noise, (dict, str)):
            raise VgpoError(f"caption_noise: expected a mapping of rates or a preset name, got {self.caption_noise!r}")
        if self.caption_noise == "":
            self.caption_noise = {}  # the empty flag value means what the empty mapping does: exact captions


def lr_factor(cfg: PretrainConfig | AutoencoderTrainConfig, step: int) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up, constant, then the
    optional linear cooldown to 0 over the last ``cooldown_steps`` (the step after the last would be 0).
    Shared by both pretraining commands (their configs name the three fields alike)."""
    factor = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.cooldown_steps:
        factor *= min(1.0, (cfg.steps - step) / cfg.cooldown_steps)
    return factor


def relation_scope(net: torch.nn.Module, scope: str) -> list[torch.nn.Parameter]:
    """The parameters a relation term of ``scope`` (``RELATION_SCOPES``) trains: every one for 'all'; for
    'attention' the cross-attention blocks' query/key path (their norm2, q, kv, q_pos), where the term reads
    its maps; 'attention+text' adds the text encoder (``net.text``), whose tokens are the keys."""
    if scope == "all":
        return list(net.parameters())
    blocks = [m for m in net.modules() if isinstance(m, AttnBlock)]
    parts = [part for b in blocks for part in (b.norm2, b.q, b.kv, b.q_pos) if part is not None]
    parts += [net.text] if scope == "attention+text" else []
    return [p for part in parts for p in part.parameters()]


def training_prompts(world: World, prompts: str) -> list[dict]:
    """The metadata ``prompts`` names: a shipped split, 'all' (the world's composition space) or a file."""
    if prompts == "all":
        return world.all_compositions()
    if prompts in SPLITS:
        return world.load_prompts(world.prompt_file(prompts))
    return world.load_prompts(Path(prompts))


@dataclass
class Batch:
    """One pretraining step's data: what was rendered (``metas``, with the render ``seeds``), the renders,
    the texts the flow loss conditions on (noisy or dropped), the timesteps and the noise."""

    metas: list[dict]
    seeds: list[int]
    images: torch.Tensor
    texts: list[str]
    t: torch.Tensor
    noise: torch.Tensor


def _batch(
    world: World,
    prompts: list[dict],
    cfg: PretrainConfig,
    step: int,
    latent_shape: tuple[int, ...],
    caption: Callable[[dict, random.Random], str] | None = None,
) -> Batch:
    """One step's ``Batch``, a pure function of (seed, step).
    ``caption(meta, rng)``, when given, writes each text in place of the exact prompt (the image stays a
    render of the metadata), from a ``random.Random`` of (seed, step, index) of its own, so the torch draws
    are those of exact captions."""
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, step))
    metas = [prompts[i] for i in balanced_choice(prompts, cfg.batch_size, gen)]
    seeds = torch.randint(2**31, (cfg.batch_size,), generator=gen).tolist()
    images = torch.stack([world.render(m, s) for m, s in zip(metas, seeds)])
    drop = (torch.rand(cfg.batch_size, generator=gen) < cfg.prompt_dropout).tolist()
    if caption is None:
        said = [m["prompt"] for m in metas]
    else:
        said = [caption(m, random.Random(derive_seed(cfg.seed, step, i, "caption"))) for i, m in enumerate(metas)]
    texts = ["" if d else text for text, d in zip(said, drop)]
    t = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen) * cfg.logit_normal_std + cfg.logit_normal_mean)
    noise = torch.randn((cfg.batch_size, *latent_shape), generator=gen)
    return Batch(metas, seeds, images, texts, t, noise)


def binding_errors(
    model: TinyFlowModel, xt: torch.Tensor, t: torch.Tensor, target: torch.Tensor, exact: list[str], swapped: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample denoising MSE of the same noisy images under their exact captions and under the captions
    with their binding exchanged (one forward over both; float32 errors). A diffusion classifier reads
    log p(x|c) as -error up to scale, so e_exact < e_swapped means the denoiser tells the two apart."""
    ids, mask = model.tokenize([*exact, *swapped])
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.precision == "bf16"):
        pred = model.net(torch.cat([xt, xt]), torch.cat([t, t]), model.net.text(ids, mask)).float()
    err = ((pred - torch.cat([target, target])) ** 2).flatten(1).mean(1)
    e_exact, e_swapped = err.chunk(2)
    return e_exact, e_swapped


def binding_contrast_loss(
    model: TinyFlowModel,
    xt: torch.Tensor,
    t: torch.Tensor,
    target: torch.Tensor,
    exact: list[str],
    swapped: list[str],
    temperature: float,
) -> tuple[torch.Tensor, float]:
    """T*softplus((e_exact - e_swapped)/T), averaged over the scenes given (``binding_errors``): a diffusion
    classifier's logistic loss, written in MSE units so that at e_exact = e_swapped each scene's error
    difference enters with slope 1/2 (near there the loss is T ln 2 plus half their mean), and it fades
    once the exact caption wins by a few T. The exchanged caption is a valid prompt whose own scenes the
    flow loss trains on, so this pushes the denoiser to read which colour or side goes with which object,
    not to ignore the words. Also returns the classifier's accuracy, the
    fraction of scenes where e_exact < e_swapped (0.5: binding ignored)."""
    e_exact, e_swapped = binding_errors(model, xt, t, target, exact, swapped)
    loss = temperature * F.softplus((e_exact - e_swapped) / temperature)
    return loss.mean(), (e_exact < e_swapped).float().mean().item()


def cross_attention_maps(
    model: TinyFlowModel, xt: torch.Tensor, t: torch.Tensor, captions: list[str]
) -> list[torch.Tensor]:
    """One forward of the network under ``captions``, keeping every U-Net cross-attention block's
    probabilities, (B, heads, pixels, tokens) with their graph, upcast to float32 (under bf16 autocast the
    block computes them in bf16): what the grounding and relation losses read."""
    blocks = [m for m in model.net.modules() if isinstance(m, AttnBlock)]
    for block in blocks:
        block.keep_cross_attention = True
    try:
        ids, mask = model.tokenize(captions)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.precision == "bf16"):
            model.net(xt, t, model.net.text(ids, mask))
        return [block.cross_attention.float() for block in blocks]
    finally:
        for block in blocks:
            block.keep_cross_attention, block.cross_attention = False, None


def _word_attention(probs: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, tokens, pixels) attention of each token over a block's pixels (heads averaged), and the block's
    height and width (square blocks: the Shapes canvas and every U-Net level are square)."""
    side = int(math.isqrt(probs.shape[2]))
    return probs.mean(1).transpose(1, 2), side, probs.shape[2] // side


def grounding_loss(maps: list[torch.Tensor], objects: list[list[tuple]], n_tok: int) -> tuple[torch.Tensor, float]:
    """TokenCompose's token loss on every cross-attention block of the U-Net (``maps`` from
    ``cross_attention_maps``): for each grounded token (an object's colour or class word,
    ``objects[b] = [(word positions, (H, W) mask), ...]`` from the world's ``object_masks``), the fraction
    of its attention, summed over pixels and averaged over heads, that comes from pixels its object covers
    (masks average-pooled to each block's resolution); the loss is (1 - fraction)^2 averaged over tokens and
    blocks. Attention is the only path from a word to pixels, so this ties each colour word to its own
    object's pixels: the binding itself, supervised by the render. Also returns the mean inside fraction
    (an object covers about 6% of the Shapes canvas: near that when attention ignores where objects are)."""
    size = next(mask.shape for scene in objects for _, mask in scene)
    masks = torch.zeros(len(objects), n_tok, *size)
    grounded = torch.zeros(len(objects), n_tok, dtype=torch.bool)
    for b, scene in enumerate(objects):
        for words, mask in scene:
            for w in words:
                masks[b, w], grounded[b, w] = mask, True
    losses, inside_fractions = [], []
    for probs in maps:
        attention, h, w = _word_attention(probs)
        target = F.adaptive_avg_pool2d(masks, (h, w)).flatten(2)
        inside = (attention * target).sum(-1) / attention.sum(-1).clamp_min(1e-8)
        losses.append(((1 - inside) ** 2)[grounded].mean())
        inside_fractions.append(inside[grounded].mean().item())
    return torch.stack(losses).mean(), sum(inside_fractions) / len(inside_fractions)


def grounded_scenes(metas: list[dict], scenes: str) -> list[int]:
    """Indices of the batch's scenes the grounding loss reads (``PretrainConfig.grounding_scenes``): those
    naming two or more objects ('multi'), or every one ('all')."""
    least = 2 if scenes == "multi" else 1
    return [i for i, m in enumerate(metas) if len(m["include"]) >= least]


def relation_loss(
    maps: list[torch.Tensor], objects: list[list[tuple]], relations: list[list[tuple]], n_tok: int, margin: float
) -> tuple[torch.Tensor, float]:
    """A relation term on the same attention: for each stated relation (``relations[b] = [(subject,
    target, (dx, dy)), ...]`` from the world's ``relations``; words from ``objects``), the centroid of the
    subject's word attention minus the target's, in canvas units (0 to 1 across), projected on the
    relation's direction, should be at least ``margin``: relu(margin - projection), averaged over relations
    and blocks. Unlike the token loss it asks only where the objects sit relative to each other, which the
    caption decides even at noise levels where their exact pixels are still unknown. Linear below the
    margin, not squared: at those noise levels the network may not yet tell the sides apart, and a convex
    loss would then be lowest with every word's attention spread evenly (projection 0 for all), which is
    what a squared hinge taught in a probe (docs/learning-study.md, section 28). Also returns the mean
    projection (0: the two words' attention centred at the same place)."""
    subject, target, scene_of, direction = [], [], [], []
    for b, (scene, stated) in enumerate(zip(objects, relations)):
        for s, j, d in stated:
            for words, rows in ((scene[s][0], subject), (scene[j][0], target)):
                rows.append(torch.zeros(n_tok).index_fill_(0, torch.tensor(words), 1.0 / len(words)))
            scene_of.append(b)
            direction.append(d)
    weights, direction = torch.stack([torch.stack(subject), torch.stack(target)]), torch.tensor(direction)
    losses, projections = [], []
    for probs in maps:
        attention, h, w = _word_attention(probs)
        attention = attention[scene_of]  # (relations, tokens, pixels)
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        xy = torch.stack([xs.flatten(), ys.flatten()], -1)  # (pixels, 2)

        a = torch.einsum("krt,rtp->krp", weights, attention)  # k: the subject's words, then the target's
        centre = (a @ xy) / a.sum(-1, keepdim=True).clamp_min(1e-8)  # (2, relations, 2)
        projection = ((centre[0] - centre[1]) * direction).sum(-1)
        losses.append(F.relu(margin - projection).mean())
        projections.append(projection.mean().item())
    return torch.stack(losses).mean(), sum(projections) / len(projections)


def relation_weight(cfg: PretrainConfig, step: int) -> float:
    """The relation term's weight at 0-based ``step``: relation_loss through the warm-up, then falling linearly to 0
    over relation_decay_steps (when set) and staying there."""
    done = step - cfg.relation_warmup_steps
    if not cfg.relation_decay_steps or done <= 0:
        return cfg.relation_loss
    return cfg.relation_loss * max(0.0, 1.0 - done / cfg.relation_decay_steps)


def pretrain(cfg: PretrainConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = get_world(cfg.world)
    prompts = training_prompts(world, cfg.prompts)
    caption = world.captioner(cfg.caption_noise) if cfg.caption_noise else None
    swap = world.binding_swapper() if cfg.binding_contrast else None
    relations = world.relation_finder() if cfg.relation_loss else None
    masker = world.masker() if cfg.grounding_loss or cfg.relation_loss else None
    related = [m for m in prompts if relations(m)] if relations is not None else []
    if relations is not None and not related:
        raise VgpoError(f"relation_loss: no prompt of prompts={cfg.prompts!r} states a relation; leave it at 0")
    data = {"prompts": cfg.prompts, "caption_noise": cfg.caption_noise}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    arch = TinyConfig(
        vocab=world.vocabulary(),
        image_size=tuple(world.image_size),
        channels=tuple(cfg.channels),
        shift=cfg.shift,
        world=cfg.world,
        text_encoder=cfg.text_encoder,
        latent=cfg.latent,
        film_text=cfg.film_text,
        full_res_cross_attention=cfg.full_res_cross_attention,
        query_positions=cfg.query_positions,
        backbone=cfg.backbone,
        dit_width=cfg.dit_width,
        dit_depth=cfg.dit_depth,
        dit_patch=cfg.dit_patch,
    )
    model = TinyFlowModel(arch, precision=cfg.precision)
    net = model.net
    if cfg.init:
        start_from = TinyFlowModel.load(cfg.init, precision="fp32")
        if dataclasses.replace(start_from.cfg, query_positions=arch.query_positions) != arch:
            raise VgpoError(f"init: {cfg.init} holds another architecture than the one these fields build")
        # A base without query positions may start a network with them: those maps keep their zero initialisation.
        missing, unexpected = net.load_state_dict(start_from.net.state_dict(), strict=False)
        if unexpected or any(".q_pos." not in k for k in missing):
            raise VgpoError(f"init: {cfg.init} has query positions; these fields build a network without them")
    ema = copy.deepcopy(net).requires_grad_(False)
    objective = {
        "text_context_loss": cfg.text_context_loss,
        "text_context_window": cfg.text_context_window if cfg.text_context_loss else 0,
        "binding_contrast": cfg.binding_contrast,
        "binding_contrast_temperature": cfg.binding_contrast_temperature if cfg.binding_contrast else 0.0,
        "grounding_loss": cfg.grounding_loss,
        "relation_loss": cfg.relation_loss,
        "relation_margin": cfg.relation_margin if cfg.relation_loss else 0.0,
        "relation_min_t": cfg.relation_min_t if cfg.relation_loss else 0.0,
        "relation_batch": cfg.relation_batch if cfg.relation_loss else 0,
        "relation_warmup_steps": cfg.relation_warmup_steps,
        "relation_warmup_trains": cfg.relation_warmup_trains,
        "relation_trains": cfg.relation_trains,
        "relation_decay_steps": cfg.relation_decay_steps,
        "grounding_scenes": cfg.grounding_scenes,
    }
    head = None
    if cfg.text_context_loss:
        head_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "context_head"))
        head = ContextHead(arch.text_dim, model.tokenizer.vocab_size, cfg.text_context_window, head_gen)
    params = [*net.parameters(), *(head.parameters() if head is not None else [])]
    positional = [p for name, p in net.named_parameters() if ".q_pos." in name]
    rest = [p for p in params if all(p is not q for q in positional)]
    groups = [{"params": rest}] + ([{"params": positional, "lr": cfg.query_positions_lr}] if positional else [])
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, cfg))
    start, wall_before, invocations = 0, 0.0, 1
    resume_path = out / "resume.pt"
    if resume_path.is_file():
        state = load_torch(resume_path)  # tensors and plain containers only: a crafted file cannot run code
        if not isinstance(state, dict) or not same_as_written(state.get("arch"), arch):
            raise VgpoError(f"{resume_path}: written for another architecture/world; use a new --out")
        written = {**_OLD_DATA, **state.get("data", {})}
        if written != data:
            raise VgpoError(
                f"{resume_path}: written for prompts={written['prompts']!r}, caption_noise="
                f"{written['caption_noise']!r}, not {cfg.prompts!r}, {cfg.caption_noise!r}; use a new --out"
            )
        written_objective = {**_OLD_OBJECTIVE, **state.get("objective", {})}
        if written_objective != objective:
            was, now = written_objective, objective
            differ = ", ".join(f"{k}={was[k]}" for k in now if was[k] != now[k])
            wanted = ", ".join(f"{now[k]}" for k in now if was[k] != now[k])
            raise VgpoError(f"{resume_path}: written with {differ}, not {wanted}; use a new --out")
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        if head is not None:
            head.load_state_dict(state["context_head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
        # Wall time and invocations add up over resumes (absent from resume files of older versions).
        wall_before, invocations = state.get("wall_s", 0.0), state.get("invocations", 1) + 1
        print(f"resuming {out} from step {start}")
    _truncate_log(out / "log.jsonl", start)
    log_path = out / "log.jsonl"
    started = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain", dynamic_ncols=True)
    warmed = {id(p) for p in relation_scope(net, cfg.relation_warmup_trains)}
    held = [p for p in net.parameters() if id(p) not in warmed]
    related_params = relation_scope(net, cfg.relation_trains)
    for step in bar:
        # Frozen weights get no gradient, so AdamW skips them (no moment, no decay): bit-identical until released.
        for p in held:
            p.requires_grad_(step >= cfg.relation_warmup_steps)
        batch = _batch(world, prompts, cfg, step, model.latent_shape, caption)
        metas, images, texts, t, noise = batch.metas, batch.images, batch.texts, batch.t, batch.noise
        with torch.no_grad():  # the autoencoder, when there is one, is frozen
            x0 = model.encode_images(images)
        xt = fm_interpolate(x0, noise, t)
        ids, mask = model.tokenize(texts)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.precision == "bf16"):
            cond = net.text(ids, mask)
            pred = net(xt, t, cond).float()
        flow = F.mse_loss(pred, noise - x0)
        losses = {"flow": flow.item()}
        loss = flow
        if head is not None:
            context = head.loss(cond["tokens"], ids, mask)
            losses["context"] = context.item()
            loss = loss + cfg.text_context_loss * context
        if swap is not None:
            # The exact caption, whatever the flow loss's (possibly noisy, possibly dropped) one was.
            pairs = [(i, m, swap(m)) for i, m in enumerate(metas)]
            pairs = [(i, m["prompt"], s["prompt"]) for i, m, s in pairs if s is not None]
            if pairs:
                idx = torch.tensor([i for i, _, _ in pairs])
                contrast, accuracy = binding_contrast_loss(
                    model,
                    xt[idx],
                    t[idx],
                    (noise - x0)[idx],
                    [e for _, e, _ in pairs],
                    [s for _, _, s in pairs],
                    cfg.binding_contrast_temperature,
                )
                losses["binding"], losses["binding_accuracy"] = contrast.item(), accuracy
                loss = loss + cfg.binding_contrast * contrast
        if masker is not None:
            # The chosen scenes under their exact captions (the words must name the render).
            idx = grounded_scenes(metas, cfg.grounding_scenes)
            if idx and cfg.grounding_loss and step >= cfg.relation_warmup_steps:
                objects = [masker(metas[i], batch.seeds[i]) for i in idx]
                maps = cross_attention_maps(model, xt[idx], t[idx], [metas[i]["prompt"] for i in idx])
                grounding, inside = grounding_loss(maps, objects, model.tokenizer.max_tokens)
                losses["grounding"], losses["grounding_inside"] = grounding.item(), inside
                loss = loss + cfg.grounding_loss * grounding
        scoped = None  # the relation term, when its gradient reaches only cfg.relation_trains
        weight = relation_weight(cfg, step)
        if relations is not None and weight > 0:
            # A batch of its own, of scenes that state a relation, at noise levels drawn uniformly from
            # [relation_min_t, 1]: where the layout is decided and the caption, not the pixels, must say which
            # side. The flow batch holds about ten such scenes, a fifth of them at those levels.
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, step, "relation"))
            chosen = [related[i] for i in torch.randint(len(related), (cfg.relation_batch,), generator=gen)]
            seeds = torch.randint(2**31, (cfg.relation_batch,), generator=gen).tolist()
            t_rel = cfg.relation_min_t + (1 - cfg.relation_min_t) * torch.rand(cfg.relation_batch, generator=gen)
            noise_rel = torch.randn((cfg.relation_batch, *model.latent_shape), generator=gen)
            with torch.no_grad():
                x0_rel = model.encode_images(torch.stack([world.render(m, s) for m, s in zip(chosen, seeds)]))
            xt_rel = fm_interpolate(x0_rel, noise_rel, t_rel)
            maps = cross_attention_maps(model, xt_rel, t_rel, [m["prompt"] for m in chosen])
            objects = [masker(m, s) for m, s in zip(chosen, seeds)]
            stated = [relations(m) for m in chosen]
            relation, projection = relation_loss(maps, objects, stated, model.tokenizer.max_tokens, cfg.relation_margin)
            losses["relation"], losses["relation_projection"] = relation.item(), projection
            losses["relation_weight"] = weight
            term = weight * relation
            if step < cfg.relation_warmup_steps:
                loss = term  # the warm-up trains the relation loss alone; the flow loss is still logged
            elif cfg.relation_trains == "all":
                loss = loss + term
            else:
                scoped = term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if scoped is not None:
            # Into the scope's weights only: beside the flow loss the term on every weight cost colours.
            scoped.backward(inputs=related_params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        check_step(f"step {step + 1}", float(grad_norm), losses)  # no NaN reaches the weights
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        bar.set_postfix(loss=f"{flow.item():.4f}")
        extra = {"context_loss": losses["context"]} if head is not None else {}
        extra |= {k: losses[k] for k in _LOGGED_LOSSES if k in losses}
        row = {"step": step + 1, "loss": flow.item(), **extra, "grad_norm": float(grad_norm)}
        append_line(log_path, json.dumps({**row, "lr": sched.get_last_lr()[0]}))
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            wall_s = round(wall_before + time.time() - started, 1)
            saved = TinyFlowModel(arch, net=ema)
            saved.save(out, extra={"pretrain": {**to_dict(cfg), "completed_steps": step + 1, "wall_s": wall_s}})
            atomic_torch_save(
                {
                    "arch": to_dict(arch),
                    "data": data,
                    "objective": objective,
                    "net": net.state_dict(),
                    **({"context_head": head.state_dict()} if head is not None else {}),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "step": step + 1,
                    "wall_s": wall_s,
                    "invocations": invocations,
                },
                resume_path,
            )
    atomic_write_text(
        json.dumps(
            {"wall_s": round(wall_before + time.time() - started, 1), "steps": cfg.steps, "invocations": invocations}
        )
        + "\n",
        out / "pretrain_time.json",
    )
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log rows of the steps the resume file holds: a killed run may have flushed rows (or half
    a row) past its last save, which the resumed run writes again."""
    if not path.is_file():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict) or row.get("step", step + 1) > step:
            break
        rows.append(line)
    atomic_write_text("".join(r + "\n" for r in rows), path)
