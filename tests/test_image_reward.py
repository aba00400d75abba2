"""The native ImageReward: batching, gradients, preprocessing, loading, offline errors and the checkpoint layout.

Behaviour is tested on small random models (seconds on CPU); numerical parity with the official package is tested
by `.ci/image_reward_parity` against the package itself, in its own environment.
"""

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

import diffsteer.rewards.image_reward  # noqa: F401  (registers "image-reward")
from diffsteer.rewards.blip import TextConfig
from diffsteer.rewards.hub import RewardWeightsNotFoundError
from diffsteer.rewards.image_reward import (
    IGNORED_KEYS,
    MED_CONFIG_FILE,
    WEIGHTS_FILE,
    ImageReward,
    VisionConfig,
    character_tokenizer,
    load_tokenizer,
)
from diffsteer.rewards.registry import available, load
from diffsteer.rewards.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


FIXTURES = Path(__file__).parent / "fixtures"
VOCAB = FIXTURES / "bert_vocab"  # 38 words; with [DEC] and [ENC], 40 tokens
PROMPTS = [
    "a photo of a cat",
    "A red car on the street at night, with city lights.",
    "an astronaut riding a horse",
    "two dogs playing in the snow",
    "an oil painting of the city at sunset",
]
SMALL_MED_CONFIG = {
    "vocab_size": 40,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "add_cross_attention": True,
    "encoder_width": 768,  # overwritten with the vision width, as BLIP does
    "pad_token_id": 0,
}
SMALL_VISION = VisionConfig(image_size=32, patch_size=8, width=48, depth=2, num_heads=4)


def small_model(seed: int = 0, vision: VisionConfig = SMALL_VISION, batch_size: int | None = 16) -> ImageReward:
    """A small ImageReward with seeded random weights; the head is scaled up so scores differ visibly."""
    torch.manual_seed(seed)
    text = TextConfig.from_med_config(SMALL_MED_CONFIG, encoder_width=vision.width)
    model = ImageReward(text, vision, str(VOCAB), batch_size=batch_size)
    with torch.no_grad():
        model.mlp.layers[-1].weight.mul_(100.0)
    return model


def images(count: int, height: int = 40, width: int = 56, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_batch_scores_equal_one_by_one() -> None:
    model = small_model(batch_size=None)
    pixels = images(len(PROMPTS))
    batch = model(pixels, PROMPTS)
    single = torch.cat([model(pixels[i : i + 1], PROMPTS[i]) for i in range(len(PROMPTS))])
    chunked = small_model(batch_size=2)(pixels, PROMPTS)
    assert batch.shape == (len(PROMPTS),) and batch.dtype == torch.float32
    assert batch.std() > 1e-3  # scores differ, so equality below means something
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-5)
    torch.testing.assert_close(batch, chunked, rtol=0, atol=1e-5)


def test_scores_depend_on_the_prompt_and_the_image() -> None:
    model = small_model()
    pixels = images(2)
    by_prompt = model(pixels[:1].expand(2, -1, -1, -1), PROMPTS[:2])
    by_image = model(pixels, PROMPTS[0])
    assert (by_prompt[0] - by_prompt[1]).abs() > 1e-4
    assert (by_image[0] - by_image[1]).abs() > 1e-4


def test_random_weights_are_seeded_and_need_no_download() -> None:
    vocab_size = len(character_tokenizer()) + 2  # with [DEC] and [ENC]
    text = TextConfig.from_med_config({**SMALL_MED_CONFIG, "vocab_size": vocab_size}, encoder_width=0)  # set by random
    torch.manual_seed(123)
    before = torch.rand(1)
    first, second, other = (
        ImageReward.random(seed, text_config=text, vision_config=SMALL_VISION) for seed in (0, 0, 1)
    )
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the caller's generator is left alone
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    assert not torch.equal(first.mlp.layers[0].weight, other.mlp.layers[0].weight)
    assert "[UNK]" not in first.tokenizer.tokenize("A Zebra, 2 photos!")  # the character vocabulary reads any word
    assert first(images(2), PROMPTS[:2]).shape == (2,)


def test_gradients_reach_the_images_and_not_the_weights() -> None:
    model = small_model()
    pixels = images(3).requires_grad_(True)
    model(pixels, PROMPTS[:3]).sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    assert (pixels.grad.flatten(1).norm(dim=1) > 0).all()  # every image gets a gradient
    assert not any(parameter.requires_grad for parameter in model.parameters())
    assert not model.training


def test_gradient_of_one_score_stays_in_its_image() -> None:
    model = small_model()
    pixels = images(3).requires_grad_(True)
    model(pixels, PROMPTS[:3])[1].backward()
    assert pixels.grad[[0, 2]].abs().max() == 0 and pixels.grad[1].abs().max() > 0


def _test_image(height: int, width: int) -> torch.Tensor:
    """A uint8 image (3, H, W) with smooth colour, two sharp-edged rectangles and pixel noise."""
    generator = torch.Generator().manual_seed(height * 1000 + width)
    image = F.interpolate(torch.rand(1, 3, 5, 7, generator=generator), size=(height, width), mode="bicubic")[0]
    image[:, height // 4 : height // 2, width // 5 : width // 3] = torch.tensor([0.9, 0.1, 0.2])[:, None, None]
    image[:, 2 * height // 3 :, width // 2 : width // 2 + 40] = 0.05
    image = image + 0.03 * torch.randn(3, height, width, generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("size", [(333, 500), (512, 512), (180, 160), (224, 300)])
def test_preprocessing_matches_the_package_pil_transform(size: tuple[int, int]) -> None:
    # The package's `_transform(224)` on a PIL image, against the native tensor path on the same uint8 image / 255.
    # Measured (normalised units): mean |diff| 0.0041-0.0043 when resizing (mostly PIL's rounding to uint8, about
    # 0.0036 on its own), max 0.023-0.092 (the largest when enlarging 180x160 across sharp edges); 0 when the shorter
    # side is already 224. Without antialiasing the mean is about ten times larger, which these bounds reject.
    package_transform = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
        ]
    )
    image = _test_image(*size)
    expected = package_transform(Image.fromarray(image.permute(1, 2, 0).numpy()))
    model = small_model(vision=VisionConfig(image_size=224, patch_size=32, width=48, depth=1, num_heads=4))
    actual = model.preprocess(image[None].float() / 255)[0]
    difference = (actual - expected).abs()
    assert actual.shape == expected.shape == (3, 224, 224)
    assert difference.mean().item() < 0.006
    assert difference.max().item() < 0.15


def _save_checkpoint(model: ImageReward, folder: Path, extras: dict[str, torch.Tensor] | None = None) -> Path:
    """The official layout: ImageReward.pt (with the package's unused extras) and med_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = {**model.state_dict(), **(extras or {})}
    torch.save(state_dict, folder / WEIGHTS_FILE)
    (folder / MED_CONFIG_FILE).write_text(json.dumps(SMALL_MED_CONFIG))
    return folder / WEIGHTS_FILE


PACKAGE_EXTRAS = {
    "blip.vision_proj.weight": torch.zeros(256, 48),
    "blip.vision_proj.bias": torch.zeros(256),
    "blip.text_proj.weight": torch.zeros(256, 32),
    "blip.text_proj.bias": torch.zeros(256),
    "blip.text_encoder.embeddings.position_ids": torch.arange(40)[None],
}


def test_load_from_a_local_folder_gives_the_same_scores(tmp_path: Path) -> None:
    model = small_model()
    _save_checkpoint(model, tmp_path / "ImageReward", PACKAGE_EXTRAS)
    pixels = images(3)
    expected = model(pixels, PROMPTS[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the package's extras are ignored silently
        loaded = load(
            "image-reward", pretrained=tmp_path / "ImageReward", tokenizer=str(VOCAB), vision_config=SMALL_VISION
        )
    assert not loaded.training and not any(parameter.requires_grad for parameter in loaded.parameters())
    torch.testing.assert_close(loaded(pixels, PROMPTS[:3]), expected, rtol=0, atol=1e-6)
    in_float64 = load(
        "image-reward",
        pretrained=tmp_path / "ImageReward",
        tokenizer=str(VOCAB),
        vision_config=SMALL_VISION,
        dtype=torch.float64,
    )
    assert next(in_float64.parameters()).dtype == torch.float64
    torch.testing.assert_close(in_float64(pixels, PROMPTS[:3]), expected, rtol=0, atol=1e-5)


def test_load_from_a_weights_file_with_its_config_beside_it_or_elsewhere(tmp_path: Path) -> None:
    model = small_model()
    weights = _save_checkpoint(model, tmp_path / "beside")
    pixels = images(2)
    expected = model(pixels, PROMPTS[:2])
    loaded = ImageReward.from_pretrained(weights, tokenizer=str(VOCAB), vision_config=SMALL_VISION)
    torch.testing.assert_close(loaded(pixels, PROMPTS[:2]), expected, rtol=0, atol=1e-6)

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "weights.pt").write_bytes(weights.read_bytes())
    with pytest.raises(RewardWeightsNotFoundError, match="med_config"):
        ImageReward.from_pretrained(alone / "weights.pt", tokenizer=str(VOCAB), vision_config=SMALL_VISION)
    loaded = ImageReward.from_pretrained(
        alone / "weights.pt", med_config=tmp_path / "beside", tokenizer=str(VOCAB), vision_config=SMALL_VISION
    )
    torch.testing.assert_close(loaded(pixels, PROMPTS[:2]), expected, rtol=0, atol=1e-6)


def test_checkpoint_checks(tmp_path: Path) -> None:
    model = small_model()
    state_dict = model.state_dict()
    missing = {key: value for key, value in state_dict.items() if key != "mlp.layers.7.bias"}
    with pytest.raises(ValueError, match=r"lacks 1 weights: mlp\.layers\.7\.bias"):
        small_model().load_checkpoint(missing)
    wrong_shape = {**state_dict, "mlp.layers.0.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match=r"mlp\.layers\.0\.weight \(3, 3\)"):
        small_model().load_checkpoint(wrong_shape)
    with pytest.warns(UserWarning, match="1 unknown checkpoint keys: blip.itm_head.weight"):
        small_model(seed=5).load_checkpoint({**state_dict, **PACKAGE_EXTRAS, "blip.itm_head.weight": torch.zeros(2)})


def test_offline_hub_id_raises_naming_the_hub_id() -> None:
    (spec,) = [spec for spec in available() if spec.name == "image-reward"]
    assert spec.needs_download and spec.differentiable and "THUDM/ImageReward" in spec.source
    with pytest.raises(RewardWeightsNotFoundError, match="THUDM/ImageReward") as error:
        load("image-reward")
    assert "HF_HUB_OFFLINE=1" in str(error.value) and "pretrained=" in str(error.value)


def test_tokenizer_without_vocabulary_raises(tmp_path: Path) -> None:
    # Offline, transformers 5 returns a tokenizer of the 5 special tokens for a missing vocabulary, without an error.
    with pytest.raises(
        RewardWeightsNotFoundError, match=r"'bert-base-uncased'.*tokenizer='/path/to/bert-base-uncased'"
    ):
        load_tokenizer("bert-base-uncased", 30524)
    with pytest.raises(RewardWeightsNotFoundError, match="no vocabulary"):
        load_tokenizer(str(tmp_path), 30524)  # an empty folder
    _save_checkpoint(small_model(), tmp_path / "weights")
    with pytest.raises(RewardWeightsNotFoundError, match="bert-base-uncased"):
        load("image-reward", pretrained=tmp_path / "weights", vision_config=SMALL_VISION)


def test_tokenizer_objects_and_sizes() -> None:
    from transformers import BertTokenizer

    words = BertTokenizer.from_pretrained(str(VOCAB))
    tokenizer = load_tokenizer(words, 40)
    assert len(words) == 38 and len(tokenizer) == 40  # the caller's tokenizer is copied, not changed
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [38, 39]
    assert tokenizer("A Cat")["input_ids"] == tokenizer("a cat")["input_ids"]  # uncased
    with pytest.raises(ValueError, match="no vocabulary"):
        load_tokenizer(BertTokenizer.from_pretrained("bert-base-uncased"), 30524)
    with pytest.raises(ValueError, match="40 tokens but ImageReward embeds only 39"):
        load_tokenizer(words, 39)
    with pytest.warns(UserWarning, match="40 tokens"):
        load_tokenizer(words, 30524)


def test_full_size_keys_and_shapes_match_the_package() -> None:
    # tests/fixtures/image_reward_keys.txt was written from the image-reward 1.5 package's model by
    # .ci/image_reward_parity (name<TAB>shape), without the extras the native model ignores.
    expected = [line.split("\t") for line in (FIXTURES / "image_reward_keys.txt").read_text().splitlines()]
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.filterwarnings("ignore", message=".*unless it is a test vocabulary")
        model = ImageReward(TextConfig(), VisionConfig(), str(VOCAB))
    actual = [[name, ",".join(map(str, tensor.shape))] for name, tensor in model.state_dict().items()]
    assert sorted(actual) == sorted(expected)
    assert not any(name.startswith(IGNORED_KEYS) for name, _ in expected)
    assert sum(parameter.numel() for parameter in model.parameters()) > 400e6
