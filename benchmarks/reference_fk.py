"""Import the public FK-steering reference pipeline from a local checkout, to time it beside diffsteer.

The reference (github.com/zacharyhorvitz/Fk-Diffusion-Steering, `text_to_image/fkd_diffusers/`) is never copied into
this repository: it is imported, unmodified, from the path given on the command line. Its module `rewards` imports
OpenAI CLIP, hpsv2, ImageReward and google-genai at the top; those imports are stubbed with empty modules, and the
pipeline's module-level `get_reward_function` is replaced by the benchmark's own reward (the pipeline resolves its
reward through that name only). Set up a checkout with the `fetch` tool or `git clone`, then:

    git --git-dir=<mirror> archive HEAD text_to_image/fkd_diffusers | tar x -C /tmp/speed/reference
    python benchmarks/reference_fk.py --reference /tmp/speed/reference   # one smoke call on tiny components

`--reference` may name the checkout's root, its `text_to_image/` or its `text_to_image/fkd_diffusers/` folder.
"""

import argparse
import contextlib
import io
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


# Modules that the reference's `rewards.py` imports at the top, with the attributes it reads from them.
STUBBED_MODULES = {"clip": (), "hpsv2": (), "image_reward_utils": ("rm_load",), "llm_grading": ("LLMGrader",)}
ImageReward = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


def reference_folder(path: str | Path) -> Path:
    """The reference's `fkd_diffusers` folder under `path` (the checkout, `text_to_image/` or the folder itself)."""
    path = Path(path).expanduser().resolve()
    for candidate in (path, path / "fkd_diffusers", path / "text_to_image" / "fkd_diffusers"):
        if (candidate / "fkd_pipeline_sd.py").is_file() and (candidate / "fkd_class.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"No fkd_pipeline_sd.py and fkd_class.py under {path} (looked in ., fkd_diffusers/ and "
        "text_to_image/fkd_diffusers/); see benchmarks/reference_fk.py for the setup."
    )


def load_reference(path: str | Path, reward: ImageReward) -> type:
    """Import the reference's `FKDStableDiffusion` from `path`, scoring with `reward(images, prompts)`.

    Args:
        path: the reference checkout (see `reference_folder`).
        reward: scores a batch of images in [0, 1], shape (N, 3, H, W), with N rewards. The reference hands its
            reward a list of N images (`output_type="pt"` makes them tensors); they are stacked and passed on.

    Returns:
        The `FKDStableDiffusion` class, a fork of diffusers' `StableDiffusionPipeline`.
    """
    folder = reference_folder(path)
    for name, attributes in STUBBED_MODULES.items():
        if name not in sys.modules:
            module = types.ModuleType(name)
            for attribute in attributes:
                setattr(module, attribute, None)
            sys.modules[name] = module
    # `rewards` and `fkd_class` are generic names: keep any module of that name from shadowing the reference's.
    shadowed = {name: sys.modules.pop(name) for name in ("rewards", "fkd_class") if name in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        import fkd_pipeline_sd
    finally:
        sys.path.remove(str(folder))
        for name in ("rewards", "fkd_class"):
            sys.modules.pop(name, None)
        sys.modules.update(shadowed)

    def get_reward_function(
        reward_name: str, images: list[Any], prompts: Any, metric_to_chase: Any = None
    ) -> list[float]:
        # The reference's rewards return a list of floats, which its pipeline turns back into a tensor.
        if isinstance(images[0], torch.Tensor):
            batch = torch.stack(images)
        else:  # PIL images (the reference's default output_type="pil")
            batch = torch.stack([torch.from_numpy(np.asarray(image)).permute(2, 0, 1) for image in images]) / 255
        prompts = [prompts] * batch.shape[0] if isinstance(prompts, str) else list(prompts)
        return torch.as_tensor(reward(batch, prompts)).tolist()

    fkd_pipeline_sd.get_reward_function = get_reward_function
    return fkd_pipeline_sd.FKDStableDiffusion


def fk_args(
    num_particles: int, num_inference_steps: int, lmbda: float, interval: int = 1, potential: str = "diff"
) -> dict[str, Any]:
    """The reference's `fkd_args` for non-adaptive resampling every `interval` steps from step 0 (plus its forced
    ESS-gated resampling at the last step), on the CPU."""
    return {
        "use_smc": True,
        "lmbda": lmbda,
        "num_particles": num_particles,
        "adaptive_resampling": False,
        "resample_frequency": interval,
        "resampling_t_start": 0,
        "resampling_t_end": num_inference_steps - 1,
        "time_steps": num_inference_steps,
        "potential_type": potential,
        "guidance_reward_fn": "benchmark",
        "device": torch.device("cpu"),
    }


def quiet() -> contextlib.AbstractContextManager:
    """Swallow the reference's prints (`Args: ...` on every call, `Resampling at timestep ...`)."""
    return contextlib.redirect_stdout(io.StringIO())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="the reference checkout (see above)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--particles", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "tiny"))
    from components import sd_components

    def brightness(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return images.mean((1, 2, 3))

    pipeline_class = load_reference(args.reference, brightness)
    pipe = pipeline_class(**sd_components(), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with quiet():
        images = pipe(
            ["a photo of a red cat"] * args.particles,
            num_inference_steps=args.steps,
            eta=1.0,
            height=32,
            width=32,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
            fkd_args=fk_args(args.particles, args.steps, lmbda=10.0),
        ).images
    print(
        f"{pipeline_class.__module__}.{pipeline_class.__name__} from {reference_folder(args.reference)}: "
        f"{tuple(images.shape)} images"
    )


if __name__ == "__main__":
    main()
