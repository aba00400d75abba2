"""Reference outputs of the official image-reward 1.5 package, for `test_image_reward_parity.py`.

Runs in the side environment that `.ci/image_reward_parity` builds (the package cannot be imported in the main one),
offline. It builds the package's `ImageReward` with the official BERT-base `med_config` and the package's own random
initialisation (no hub), saves its weights once as `ImageReward.pt` + `med_config.json` (the layout the native loader
reads), then saves, for fixed seeded images and prompts: the tokens, the PIL-preprocessed 224-px inputs, the vision
tokens, the [CLS] text features, the raw and standardised scores (`score_gard`), and the gradient of the summed scores
with respect to the preprocessed input. It also writes the model's state-dict keys and shapes.

Usage: python image_reward_reference.py --out DIR --vocab path/to/vocab.txt
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


# The official med_config.json of THUDM/ImageReward: BERT-base with cross-attention (encoder_width is overwritten
# with the ViT-L width, 1024, when the model is built).
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}
# Words from tests/fixtures/bert_vocab; casing, punctuation, a word piece (dog ##s), an unknown word and a prompt
# longer than 35 tokens exercise the tokenizer.
PROMPTS = [
    "a photo of a cat",
    "A red car on the street at night, with city lights.",
    "an astronaut riding a zebra",
    "two dogs playing in the snow with a blue car and a red car, the city lights at night and a portrait of a cat "
    "and a dog on the street at sunset",
]
IMAGE_SIZES = [(256, 256), (256, 256), (256, 256), (200, 320)]  # (height, width); the last is not square
SEED = 0
# Checkpoint entries the native model ignores (rewards/image_reward.py IGNORED_KEYS; diffsteer is not importable here).
IGNORED_KEYS = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")
PINNED = ["image-reward", "transformers", "diffusers", "huggingface-hub", "tokenizers", "timm", "torch", "torchvision"]


def make_images(generator: torch.Generator) -> list[torch.Tensor]:
    """Seeded uint8 images (3, H, W): smooth random colour fields with some pixel noise, closer to photographs than
    white noise is (resampling differences between PIL and tensors grow with high frequencies)."""
    images = []
    for height, width in IMAGE_SIZES:
        coarse = torch.rand(1, 3, 6, 6, generator=generator)
        smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        noisy = smooth + 0.05 * torch.randn(3, height, width, generator=generator)
        images.append((noisy.clamp(0, 1) * 255).round().to(torch.uint8))
    return images


def build_package_model(workdir: Path, out: Path):  # returns ImageReward.ImageReward
    """The package's model with its own seeded init, or with the weights saved by an earlier run."""
    import ImageReward as RM

    (workdir / "med_config.json").write_text(json.dumps(MED_CONFIG, indent=2))
    torch.manual_seed(SEED)
    # The package calls BertTokenizer.from_pretrained("bert-base-uncased"); a local folder of that name wins.
    model = RM.ImageReward(med_config=str(workdir / "med_config.json"), device="cpu").eval()
    # The package initialises its head with std 1/769, which makes raw outputs about 1e-9: every score would equal
    # -mean/std in float32 and a score comparison could not fail. A seeded head of ordinary scale (outputs about 0.1)
    # makes the scores themselves informative.
    head_generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, parameter in model.mlp.named_parameters():
            parameter.normal_(0.0, 0.05 if name.endswith("weight") else 0.01, generator=head_generator)
    weights = out / "ImageReward.pt"
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    else:
        torch.save(model.state_dict(), out / "ImageReward.pt.partial")
        os.replace(out / "ImageReward.pt.partial", weights)
    shutil.copy(workdir / "med_config.json", out / "med_config.json")
    return model


def reference_outputs(model, images: list[torch.Tensor]) -> dict:
    """Everything the parity test compares, computed by the package's own modules."""
    tokens = model.blip.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    pixels = torch.stack([model.preprocess(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])
    with torch.no_grad():
        start = time.perf_counter()
        image_embeds = model.blip.visual_encoder(pixels)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        text = model.blip.text_encoder(
            tokens.input_ids,
            attention_mask=tokens.attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            return_dict=True,
        ).last_hidden_state[:, 0]
        raw_scores = model.mlp(text)[:, 0]
        forward_seconds = time.perf_counter() - start
    pixels_with_grad = pixels.clone().requires_grad_(True)
    start = time.perf_counter()
    scores = model.score_gard(tokens.input_ids, tokens.attention_mask, pixels_with_grad)
    scores.sum().backward()
    forward_backward_seconds = time.perf_counter() - start
    score_pil = model.score(PROMPTS[0], Image.fromarray(images[0].permute(1, 2, 0).numpy()))
    return {
        "prompts": PROMPTS,
        "images": images,
        "input_ids": tokens.input_ids,
        "attention_mask": tokens.attention_mask,
        "pixels": pixels,
        "image_embeds": image_embeds,
        "text_features": text,
        "raw_scores": raw_scores,
        "scores": scores.detach()[:, 0],
        "grad": pixels_with_grad.grad,
        "score_pil_image0": score_pil,
        "seconds": {"forward_no_grad": forward_seconds, "score_gard_forward_backward": forward_backward_seconds},
        "versions": {name: importlib.metadata.version(name) for name in PINNED},
    }


def write_keys(model, path: Path) -> None:
    """`name<TAB>shape` per line for every state-dict entry except the ignored extras."""
    lines = [
        f"{name}\t{','.join(map(str, tensor.shape))}"
        for name, tensor in model.state_dict().items()
        if not name.startswith(IGNORED_KEYS)
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the weights and reference outputs")
    parser.add_argument("--vocab", type=Path, required=True, help="a BERT vocab.txt (the test vocabulary)")
    args = parser.parse_args()
    args.out, args.vocab = args.out.resolve(), args.vocab.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    start = time.perf_counter()
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as workdir:
        (Path(workdir) / "bert-base-uncased").mkdir()
        shutil.copy(args.vocab, Path(workdir) / "bert-base-uncased" / "vocab.txt")
        os.chdir(workdir)
        try:
            model = build_package_model(Path(workdir), args.out)
        finally:
            os.chdir(here)
    build_seconds = time.perf_counter() - start
    outputs = reference_outputs(model, make_images(torch.Generator().manual_seed(SEED)))
    outputs["seconds"]["build_and_save"] = build_seconds
    torch.save(outputs, args.out / "reference.pt")
    write_keys(model, args.out / "image_reward_keys.txt")
    summary = {key: outputs[key] for key in ("seconds", "versions", "score_pil_image0")}
    summary["scores"] = outputs["scores"].tolist()
    summary["raw_scores"] = outputs["raw_scores"].tolist()
    summary["grad_norm"] = outputs["grad"].norm().item()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
