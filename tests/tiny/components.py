"""Tiny seeded components for each pipeline family, built from config with the tokenizers in this folder.

Like diffusers' `get_dummy_components`, but offline: the tokenizers are built from the vocabulary files committed
here, so prompts are real strings and nothing touches a hub.
"""

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)


HERE = Path(__file__).parent


def in_eval_mode(components: dict[str, Any]) -> dict[str, Any]:
    """Models built from config start in training mode (T5's dropout would make every call differ);
    `from_pretrained` puts them in eval mode, so do the same."""
    for component in components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return components


def clip_tokenizer() -> CLIPTokenizer:
    tokenizer = CLIPTokenizer(str(HERE / "vocab.json"), str(HERE / "merges.txt"), model_max_length=77)
    # transformers 5 returns a near-empty tokenizer instead of failing when files are missing: check the size.
    assert len(tokenizer) == 232, len(tokenizer)
    return tokenizer


def t5_tokenizer() -> T5TokenizerFast:
    tokenizer = T5TokenizerFast(
        tokenizer_file=str(HERE / "t5_tokenizer.json"),
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=512,
    )
    assert len(tokenizer) == 51, len(tokenizer)
    return tokenizer


def clip_text_config(tokenizer: CLIPTokenizer, hidden_size: int = 32, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        projection_dim=projection_dim,
        hidden_act="gelu",
    )


def t5_encoder(tokenizer: T5TokenizerFast, d_model: int = 32) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)


def sd_components() -> dict[str, Any]:
    """Stable Diffusion 1.x/2.x: UNet on 4x(H/2)x(W/2) latents, a 2-layer CLIP text encoder."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return in_eval_mode(
        {
            "unet": unet,
            "scheduler": scheduler,
            "vae": vae,
            "text_encoder": text_encoder,
            "tokenizer": tokenizer,
            "safety_checker": None,
            "feature_extractor": None,
            "image_encoder": None,
        }
    )


def sdxl_components() -> dict[str, Any]:
    """SDXL: two CLIP text encoders (the second with projection) and a text_time-conditioned UNet."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + 32 pooled
        cross_attention_dim=64,
        norm_num_groups=2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer))
    return in_eval_mode(
        {
            "unet": unet,
            "scheduler": scheduler,
            "vae": vae,
            "text_encoder": text_encoder,
            "tokenizer": tokenizer,
            "text_encoder_2": text_encoder_2,
            "tokenizer_2": clip_tokenizer(),
            "image_encoder": None,
            "feature_extractor": None,
        }
    )


def flow_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def sd3_components() -> dict[str, Any]:
    """SD3: an MMDiT transformer, two CLIP encoders with projection and a T5 encoder."""
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    tokenizer, tokenizer_3 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(clip_text_config(tokenizer))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer))
    torch.manual_seed(0)
    text_encoder_3 = t5_encoder(tokenizer_3)
    return in_eval_mode(
        {
            "scheduler": FlowMatchEulerDiscreteScheduler(),
            "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2,
            "text_encoder_3": text_encoder_3,
            "tokenizer": tokenizer,
            "tokenizer_2": clip_tokenizer(),
            "tokenizer_3": tokenizer_3,
            "transformer": transformer,
            "vae": flow_vae(),
            "image_encoder": None,
            "feature_extractor": None,
        }
    )


def flux_components() -> dict[str, Any]:
    """Flux: a tiny Flux transformer on packed latents, a CLIP encoder (pooled) and a T5 encoder."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer))
    torch.manual_seed(0)
    text_encoder_2 = t5_encoder(tokenizer_2)
    return in_eval_mode(
        {
            "scheduler": FlowMatchEulerDiscreteScheduler(),
            "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2,
            "tokenizer": tokenizer,
            "tokenizer_2": tokenizer_2,
            "transformer": transformer,
            "vae": flow_vae(),
            "image_encoder": None,
            "feature_extractor": None,
        }
    )
