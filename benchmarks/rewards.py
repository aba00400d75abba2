"""CPU cost per image of every registered reward, at full size with random weights (the cost does not depend on
the weights, and no hub is reachable here).

Each reward scores 512x512 images (the size Stable Diffusion decodes), so the cost includes its resize. It prints a
Markdown table: parameters, seconds per image without gradients (batch of 4, median of the repeats after one warm-up
call) and with a backward pass to the images (batch of 2) for the differentiable ones.

    python benchmarks/rewards.py [--threads 2] [--repeats 2] [--only clip-vit-b-32,brightness]
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from diffsteer import rewards


def pickscore_full_size() -> rewards.Reward:
    """PickScore's architecture (a CLIP ViT-H-14 in transformers' format), built on the meta device and filled with
    random values: the default initialisation of a billion weights takes longer than the measurement."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    vision = dict(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14
    )
    text = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024)
    with torch.device("meta"):
        model = CLIPModel(config)
    model = model.to_empty(device="cpu")
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    tiny = Path(__file__).parents[1] / "tests" / "tiny"
    tokenizer = CLIPTokenizer(str(tiny / "vocab.json"), str(tiny / "merges.txt"), model_max_length=77)
    return rewards.PickScore(model, (tokenizer, CLIPImageProcessor()))


def image_reward_full_size() -> rewards.Reward:
    from diffsteer.rewards.image_reward import ImageReward

    return ImageReward.random(seed=0)


BUILDERS: dict[str, Callable[[], rewards.Reward]] = {
    "brightness": rewards.Brightness,
    "colorfulness": rewards.Colorfulness,
    "jpeg-compressibility": rewards.JpegCompressibility,
    "clip (ViT-B-32)": lambda: rewards.CLIPScore("ViT-B-32", pretrained=None),
    "clip (ViT-L-14)": lambda: rewards.CLIPScore("ViT-L-14", pretrained=None),
    "clip (ViT-H-14)": lambda: rewards.CLIPScore("ViT-H-14", pretrained=None),
    "aesthetic": lambda: rewards.AestheticScore(predictor=None, clip_pretrained=None),
    "hpsv2.1": lambda: rewards.HPSv2(checkpoint=None),
    "pickscore": pickscore_full_size,
    "image-reward": image_reward_full_size,
}


def seconds_per_image(reward: rewards.Reward, batch: int, repeats: int, backward: bool) -> float:
    images = torch.rand(batch, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle to the left of a blue square"] * batch
    times = []
    for _ in range(repeats + 1):  # the first call warms up allocators and caches
        x = images.clone().requires_grad_(backward)
        started = time.perf_counter()
        scores = reward(x, prompts)
        if backward:
            scores.sum().backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated names from the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [name for name in BUILDERS if not args.only or name in args.only.split(",")]
    print(f"{args.threads} threads, 512x512 inputs; seconds per image")
    print("| reward | parameters | no grad (batch 4) | forward + backward (batch 2) |")
    print("| --- | --- | --- | --- |")
    for name in names:
        reward = BUILDERS[name]()
        parameters = sum(parameter.numel() for parameter in reward.parameters())
        forward = seconds_per_image(reward, 4, args.repeats, backward=False)
        both = seconds_per_image(reward, 2, args.repeats, backward=True) if reward.differentiable else None
        both_text = f"{both:.3f}" if both is not None else "not differentiable"
        print(f"| {name} | {parameters / 1e6:.1f} M | {forward:.3f} | {both_text} |", flush=True)
        del reward


if __name__ == "__main__":
    main()
