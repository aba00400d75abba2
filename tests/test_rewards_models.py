"""CLIP score, HPSv2, the aesthetic predictor and PickScore on tiny random models built offline: loading from local
files in the official formats, preprocessing against the reference pipelines, gradients, batch invariance, and the
offline error. (ImageReward has its own file.)"""

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision import transforms as T
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig

import diffsteer.rewards as rewards
from diffsteer.rewards import CLIPScore, HPSv2, RewardWeightsNotFoundError
from diffsteer.rewards.aesthetic import AestheticHead
from diffsteer.rewards.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, resize_center_crop

from .tiny.components import clip_text_config, clip_tokenizer


TINY = "tiny-clip-test"
PROMPTS = ["a red circle", "two blue squares", "a red circle"]


@pytest.fixture(scope="module", autouse=True)
def tiny_open_clip(tmp_path_factory):
    """A 3.4M-parameter open_clip architecture (the vocabulary stays 49408: the tokenizer emits ids up to 49407)."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (folder / f"{TINY}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def tiny_weights(path: Path, seed: int = 0, wrap: bool = False) -> Path:
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY, pretrained=None)
    torch.save({"state_dict": model.state_dict()} if wrap else model.state_dict(), path)
    return path


def images(n: int = 3, size: int = 48, seed: int = 0) -> torch.Tensor:
    # Smooth images, as a decoder makes them, quantised to uint8 so the PIL reference sees the same pixels.
    noise = torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    smooth = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth * 255).round() / 255


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def check_batch_invariance_and_gradient(reward, batch: torch.Tensor, prompts: list[str] | None) -> None:
    together = reward(batch, prompts)
    alone = torch.cat([reward(batch[i : i + 1], None if prompts is None else prompts[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    batch = batch.clone().requires_grad_()
    reward(batch, prompts).sum().backward()
    assert batch.grad is not None and torch.isfinite(batch.grad).all() and batch.grad.abs().sum() > 0


# Preprocessing against the references -----------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(256, 256), (512, 384), (100, 160)])
def test_resize_center_crop_matches_pil_bicubic_within_a_stated_tolerance(height, width):
    batch = images(2, seed=1)
    batch = (torch.nn.functional.interpolate(batch, size=(height, width), mode="bilinear") * 255).round() / 255
    reference = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor()])
    expected = torch.stack(
        [normalize(reference(to_pil(image))[None], OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)[0] for image in batch]
    )
    ours = normalize(resize_center_crop(batch, 224), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    difference = (ours - expected).abs()
    # PIL rounds to uint8 (0.5/255/0.27 = 0.007 in normalised units) and filters slightly differently: measured mean
    # 0.0038-0.0043 and max 0.015-0.016 on these images (rewards.md measured max 0.118 on a photograph's edges).
    assert difference.mean() < 0.008 and difference.max() < 0.05, (difference.mean(), difference.max())


def test_clip_preprocessing_matches_open_clips_own_transform():
    reward = CLIPScore(TINY, pretrained=None)
    reference = image_transform_v2(PreprocessCfg(**reward.model.visual.preprocess_cfg), is_train=False)
    batch = images(2, size=300, seed=2)
    expected = torch.stack([reference(to_pil(image)) for image in batch])
    difference = (reward.preprocess(batch) - expected).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.1, (difference.mean(), difference.max())


def test_hps_preprocessing_is_hpsv2s_resize_max_size():
    """HPSv2's `ResizeMaxSize` (resize the longer side on the tensor, pad with zeros; rounded sizes, the odd pixel
    right and bottom), written out from its definition with torchvision's tensor ops, one image at a time."""
    from torchvision.transforms import functional as TF

    batch = images(2, size=96, seed=3)
    batch = torch.nn.functional.interpolate(batch, size=(96, 61), mode="bilinear")
    expected = []
    for image in batch:
        scale = 32 / max(image.shape[1:])
        size = [round(dim * scale) for dim in image.shape[1:]]
        resized = TF.resize(image, size, T.InterpolationMode.BICUBIC)
        pad_h, pad_w = 32 - size[0], 32 - size[1]
        padded = TF.pad(resized, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        expected.append(TF.normalize(padded, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
    reward = HPSv2(checkpoint=None, model_name=TINY)
    torch.testing.assert_close(reward.preprocess(batch), torch.stack(expected), rtol=0, atol=1e-5)


# CLIP score -------------------------------------------------------------------------------------------------------


def test_clip_score_is_torchmetrics_definition_on_a_local_checkpoint(tmp_path):
    path = tiny_weights(tmp_path / "tiny.bin")
    reward = rewards.load("clip", model_name=TINY, pretrained=path, clamp=False)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=str(path))
    tokenizer = open_clip.get_tokenizer(TINY)
    batch = images(3, size=32)  # at the model's size there is no resize: the preprocessing is exact
    with torch.no_grad():
        image_features = model.encode_image(
            torch.stack([preprocess(to_pil(image)) for image in batch]), normalize=True
        )
        text_features = model.encode_text(tokenizer(PROMPTS), normalize=True)
    expected = 100 * (image_features * text_features).sum(-1)
    torch.testing.assert_close(reward(batch, PROMPTS), expected, rtol=1e-5, atol=1e-4)
    clamped = rewards.load("clip", model_name=TINY, pretrained=path)
    torch.testing.assert_close(clamped(batch, PROMPTS), expected.clamp(min=0), rtol=1e-5, atol=1e-4)
    check_batch_invariance_and_gradient(reward, images(3), PROMPTS)


def test_clip_score_on_a_device_and_dtype_of_its_own():
    reward = CLIPScore(TINY, pretrained=None, dtype=torch.float64, clamp=False)
    scores = reward(images(2).to(torch.float16), PROMPTS[:2])
    assert scores.dtype == torch.float32 and scores.shape == (2,)


def test_clip_offline_error_names_the_hub_id_and_local_path_option():
    with pytest.raises(RewardWeightsNotFoundError, match=r"timm/vit_base_patch32_clip_224\.openai.*pretrained="):
        rewards.load("clip", model_name="ViT-B-32", pretrained="openai")
    with pytest.raises(ValueError, match=r"neither a local file nor a tag"):
        rewards.load("clip", model_name="ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match=r"unknown open_clip model"):
        rewards.load("clip", model_name="ViT-Q-99", pretrained=None)


# HPSv2 ------------------------------------------------------------------------------------------------------------


def test_hps_loads_its_checkpoint_format_from_a_folder_and_scores_cosines(tmp_path):
    tiny_weights(tmp_path / "HPS_v2.1_compressed.pt", wrap=True)
    reward = rewards.load("hpsv2.1", checkpoint=tmp_path, model_name=TINY)
    model = open_clip.create_model(TINY, pretrained=None)
    model.load_state_dict(torch.load(tmp_path / "HPS_v2.1_compressed.pt")["state_dict"])
    batch = images(3, size=32)
    with torch.no_grad():
        pixels = normalize(batch, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        expected = (
            model.encode_image(pixels, normalize=True)
            * model.encode_text(open_clip.get_tokenizer(TINY)(PROMPTS), normalize=True)
        ).sum(-1)
    torch.testing.assert_close(reward(batch, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    check_batch_invariance_and_gradient(reward, images(3), PROMPTS)
    with pytest.raises(RewardWeightsNotFoundError, match=r"has no 'HPS_v2_compressed.pt'"):
        rewards.load("hpsv2", checkpoint=tmp_path, model_name=TINY)


def test_hps_offline_error_and_full_size_architecture():
    with pytest.raises(RewardWeightsNotFoundError, match=r"'HPS_v2\.1_compressed\.pt' from the hub id 'xswu/HPSv2'"):
        rewards.load("hpsv2.1")
    # The HPS checkpoints hold open_clip ViT-H-14's 686 tensors (shared/reference/rewards.md compared them key by key).
    model = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
    state = model.state_dict()
    assert len(state) == 686
    assert state["visual.proj"].shape == (1280, 1024) and state["token_embedding.weight"].shape == (49408, 1024)


# Aesthetic --------------------------------------------------------------------------------------------------------


def test_aesthetic_head_keys_are_the_released_predictors():
    keys = {name: tuple(value.shape) for name, value in AestheticHead(768).state_dict().items()}
    assert keys == {
        "layers.0.weight": (1024, 768),
        "layers.0.bias": (1024,),
        "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,),
        "layers.4.weight": (64, 128),
        "layers.4.bias": (64,),
        "layers.6.weight": (16, 64),
        "layers.6.bias": (16,),
        "layers.7.weight": (1, 16),
        "layers.7.bias": (1,),
    }


def test_aesthetic_is_the_head_on_normalised_image_embeddings(tmp_path):
    backbone = tiny_weights(tmp_path / "clip.bin")
    torch.manual_seed(1)
    head = AestheticHead(32)
    torch.save(head.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    reward = rewards.load(
        "aesthetic", predictor=tmp_path / "sac+logos+ava1-l14-linearMSE.pth", clip_pretrained=backbone, clip_model=TINY
    )
    model = open_clip.create_model(TINY, pretrained=str(backbone))
    batch = images(3, size=32)
    with torch.no_grad():
        embedding = model.encode_image(normalize(batch, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
        expected = head.eval()(embedding / embedding.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(reward(batch), expected, rtol=1e-5, atol=1e-5)
    check_batch_invariance_and_gradient(reward, images(3), None)


def test_aesthetic_offline_error():
    with pytest.raises(
        RewardWeightsNotFoundError, match=r"'aesthetic-model.pth' from the hub id 'trl-lib/ddpo-aesthetic"
    ):
        rewards.load("aesthetic")


# PickScore --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pickscore_folders(tmp_path_factory):
    """A tiny CLIPModel and a processor folder saved in transformers' format, as the hub repositories are."""
    folder = tmp_path_factory.mktemp("pickscore")
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    config = CLIPConfig(
        text_config=clip_text_config(tokenizer, projection_dim=16).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "processor")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "processor"
    )
    return folder


def test_pickscore_matches_transformers_processor_path(pickscore_folders):
    reward = rewards.load("pickscore", model=pickscore_folders / "model", processor=pickscore_folders / "processor")
    model = CLIPModel.from_pretrained(pickscore_folders / "model").eval()
    processor = CLIPImageProcessor.from_pretrained(pickscore_folders / "processor")
    tokenizer = clip_tokenizer()
    batch = images(3, size=64)
    with torch.no_grad():
        pixels = processor(images=[to_pil(image) for image in batch], return_tensors="pt").pixel_values
        image_embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        tokens = tokenizer(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text_embeds = model.text_projection(model.text_model(**tokens).pooler_output)
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        expected = model.logit_scale.exp() * (image_embeds * text_embeds).sum(-1)
    # The processor resizes PIL images (uint8); ours resizes tensors: scores agree to the preprocessing difference.
    np.testing.assert_allclose(reward(batch, PROMPTS).numpy(), expected.numpy(), rtol=0, atol=0.05)
    check_batch_invariance_and_gradient(reward, images(3), PROMPTS)


def test_pickscore_offline_error_names_the_hub_id():
    with pytest.raises(RewardWeightsNotFoundError, match=r"hub id 'yuvalkirstain/PickScore_v1'.*model="):
        rewards.load("pickscore")
