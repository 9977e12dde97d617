"""Tiny random diffusers pipelines and CLIP models, built in-process with no download.

diffusers' own tests load ``hf-internal-testing/tiny-random-*`` from the hub; we cannot, so every
config is written by hand and the tokenizers are built from in-memory vocabularies (a character
level BPE for CLIP, a character level Unigram for T5: transformers 5 builds both on the
``tokenizers`` library, no sentencepiece, no files).

Sizes are chosen for speed on 2 CPU cores while keeping the real architectures' structure
(SD3.5's dual-attention layer and RMS qk-norm, FLUX's double and single stream blocks and
guidance embedding, a 2-level VAE so that the latent is a downsampled space).
"""

from __future__ import annotations

import string

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Import into a test module to run it on one intra-op thread, restored afterwards. The tiny
    models gain nothing from threads, and on a CPU shared with another job OpenMP's spinning workers
    made these tests 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


RESOLUTION = 16  # pixels; the tiny VAE downsamples by 2, so latents are 8x8
MAX_TOKENS = 16  # CLIP tokenizer length and T5 max_sequence_length

_CHARS = string.ascii_lowercase + string.digits + ".,!?'-"


def clip_tokenizer(max_length: int = MAX_TOKENS):
    """A character-level CLIP BPE tokenizer (no merges): every character is a token."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    return tok


def t5_tokenizer(max_length: int = MAX_TOKENS):
    """A character-level T5 Unigram tokenizer: <pad>=0, </s>=1, <unk>=2, then pieces."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(ch, -3.0) for ch in _CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def clip_text_config(vocab_size: int, hidden: int = 32, projection_dim: int = 32, max_positions: int = MAX_TOKENS):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=max_positions,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )


def t5_encoder(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(cfg)


def tiny_vae(latent_channels: int, shift_factor: float | None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=RESOLUTION,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=1.5035,
    )


def sd3_pipeline(seed: int = 0, shift: float = 3.0):
    """A tiny random ``StableDiffusion3Pipeline`` (SD3.5-M structure: dual attention, RMS qk-norm)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    te = CLIPTextModelWithProjection(clip_text_config(len(tok)))
    te2 = CLIPTextModelWithProjection(clip_text_config(len(tok2)))
    te3 = t5_encoder(len(tok3), d_model=64)  # >= the two CLIP widths concatenated (SD3 pads CLIP to T5's)
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 2,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=16,
        pooled_projection_dim=64,  # two CLIP projections concatenated
        pos_embed_max_size=8,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = tiny_vae(latent_channels=4, shift_factor=0.0609)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok2,
        text_encoder_3=te3,
        tokenizer_3=tok3,
    )


def flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """A tiny random ``FluxPipeline`` (FLUX.1-dev structure: guidance embedding, dynamic shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    te = CLIPTextModel(clip_text_config(len(tok)))
    te2 = t5_encoder(len(tok2), d_model=32)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    vae = tiny_vae(latent_channels=4, shift_factor=0.0609)
    # FLUX.1-dev's scheduler config (dynamic shifting from the image sequence length).
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok2,
        transformer=transformer,
    )


def clip_model_and_processor(seed: int = 0, image_size: int = 32, projection_dim: int = 16):
    """A tiny random ``CLIPModel`` with a ``CLIPProcessor`` (character-level tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tok = clip_tokenizer(max_length=77)
    text = clip_text_config(len(tok), hidden=32, projection_dim=projection_dim, max_positions=77).to_dict()
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=projection_dim,
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tok)
