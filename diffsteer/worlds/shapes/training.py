"""Training of the shapes world: the autoencoder, then the UNet with its text encoder on cached latents, and the
CLIP reward, each logging its loss so that a run can be compared with the shipped one."""

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffsteer.worlds.shapes.captions import (
    CATEGORIES,
    caption_of,
    held_out_prompts,
    parse,
    random_requirements,
    scene_for,
    training_captions,
)
from diffsteer.worlds.shapes.scenes import render


def render_dataset(num_scenes: int, mixed_fraction: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """`num_scenes` rendered scenes, uint8 (N, 64, 64, 3), and their captions: a category drawn uniformly and a
    training caption of it, or (with probability `mixed_fraction`) a free-form caption; never a held-out one."""
    rng = np.random.default_rng(seed)
    held_out = {caption for captions in held_out_prompts().values() for caption in captions}
    by_category = training_captions()
    images, captions = [], []
    while len(captions) < num_scenes:
        if rng.random() < mixed_fraction:
            requirements = random_requirements(rng)
            caption = caption_of(requirements)
            if caption in held_out:
                continue
        else:
            options = by_category[CATEGORIES[rng.integers(len(CATEGORIES))]]
            caption = options[rng.integers(len(options))]
            requirements = parse(caption)
        images.append(render(scene_for(requirements, rng)))
        captions.append(caption)
    return np.stack(images), captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) to float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


class LossLog:
    """Mean loss over each window of steps, printed and kept for the training log."""

    def __init__(self, stage: str, total: int, every: int = 50) -> None:
        self.stage, self.total, self.every = stage, total, every
        self.rows: list[dict[str, float]] = []
        self._window: list[float] = []
        self._start = time.perf_counter()

    def add(self, step: int, loss: float) -> None:
        self._window.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            mean = float(np.mean(self._window))
            elapsed = time.perf_counter() - self._start
            self.rows.append({"step": step + 1, "loss": round(mean, 6), "elapsed_s": round(elapsed, 1)})
            print(f"[{self.stage}] step {step + 1}/{self.total} loss {mean:.5f} ({elapsed:.0f} s)", flush=True)
            self._window = []


def _batches(num_items: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from torch.randperm(num_items, generator=generator).split(batch_size)


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to a tenth."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class _Optimizer:
    """AdamW under the warm-up and cosine schedule, stepped on a loss (with optional gradient-norm clipping)."""

    def __init__(
        self,
        parameters: list[torch.nn.Parameter],
        config: dict[str, Any],
        weight_decay: float,
        warmup_steps: int,
        clip_norm: float | None = None,
    ) -> None:
        self.parameters, self.clip_norm = parameters, clip_norm
        self.optimizer = torch.optim.AdamW(parameters, lr=config["learning_rate"], weight_decay=weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(warmup_steps, config["steps"]))

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_norm)
        self.optimizer.step()
        self.schedule.step()


def train_vae(vae: torch.nn.Module, images: np.ndarray, config: dict[str, Any], seed: int) -> list[dict[str, float]]:
    """L1 reconstruction plus a small KL term, on the full 64x64 scenes."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = _Optimizer(list(vae.parameters()), config, weight_decay=0.0, warmup_steps=50)
    log = LossLog("vae", config["steps"])
    batches = _batches(len(images), config["batch_size"], generator)
    vae.train()
    for step in range(config["steps"]):
        x = to_tensor(images[next(batches).numpy()])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        loss = F.l1_loss(reconstruction, x) + config["kl_weight"] * posterior.kl().mean()
        optimizer.step(loss)
        log.add(step, loss.item())
    vae.eval()
    return log.rows


def train_decoder(
    vae: torch.nn.Module, images: np.ndarray, config: dict[str, Any], seed: int
) -> list[dict[str, float]]:
    """Fine-tune the decoder alone (L1 plus squared error) with the encoder frozen.

    The latents stay exactly what the UNet trains on, so this stage can run before or after the UNet. Squared error
    weighs the large, rare errors inside shapes (a red triangle decoded with an orange core) that L1 leaves.
    """
    generator = torch.Generator().manual_seed(seed)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.requires_grad_(False)
    for parameter in decoder:
        parameter.requires_grad_(True)
    optimizer = _Optimizer(decoder, config, weight_decay=0.0, warmup_steps=50)
    log = LossLog("decoder", config["steps"])
    batches = _batches(len(images), config["batch_size"], generator)
    vae.eval()  # no dropout or batch statistics in either half; gradients flow through the decoder only
    for step in range(config["steps"]):
        x = to_tensor(images[next(batches).numpy()])
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        loss = F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x)
        optimizer.step(loss)
        log.add(step, loss.item())
    vae.requires_grad_(True)
    return log.rows


@torch.no_grad()
def encode_latents(
    vae: torch.nn.Module, images: np.ndarray, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of every scene."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(to_tensor(images[start : start + batch_size])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    tokenizer: Any,
    noise_scheduler: Any,
    latents: tuple[torch.Tensor, torch.Tensor],
    captions: list[str],
    config: dict[str, Any],
    seed: int,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Epsilon or v prediction (as the scheduler says) on scaled latents, with the text encoder trained jointly and
    captions dropped to "" at `caption_dropout` (classifier-free guidance). Returns the log and the EMA weights of
    both models."""
    generator = torch.Generator().manual_seed(seed)
    means, stds = latents
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = _Optimizer(parameters, config, weight_decay=1e-2, warmup_steps=config["warmup_steps"], clip_norm=1.0)
    ema = {name: p.detach().clone() for name, p in _named(unet, text_encoder)}
    log = LossLog("unet", config["steps"])
    batches = _batches(len(captions), config["batch_size"], generator)
    unet.train()
    text_encoder.train()
    tokens = tokenizer(
        [*captions, ""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    )
    caption_ids, empty_ids = tokens.input_ids[:-1], tokens.input_ids[-1]
    for step in range(config["steps"]):
        index = next(batches)
        z = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        z = z * config["scaling_factor"]
        ids = caption_ids[index].clone()
        ids[torch.rand(len(index), generator=generator) < config["caption_dropout"]] = empty_ids
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy = noise_scheduler.add_noise(z, noise, t)
        prediction = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        velocity = noise_scheduler.config.prediction_type == "v_prediction"
        loss = F.mse_loss(prediction, noise_scheduler.get_velocity(z, noise, t) if velocity else noise)
        optimizer.step(loss)
        with torch.no_grad():
            decay = min(config["ema_decay"], (1 + step) / (10 + step))
            for name, p in _named(unet, text_encoder):
                ema[name].lerp_(p.detach(), 1 - decay)
        log.add(step, loss.item())
    unet.eval()
    text_encoder.eval()
    unet_ema = {name[5:]: value for name, value in ema.items() if name.startswith("unet.")}
    text_ema = {name[5:]: value for name, value in ema.items() if name.startswith("text.")}
    return log.rows, unet_ema, text_ema


def _named(unet: torch.nn.Module, text_encoder: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, p in unet.named_parameters():
        yield f"unet.{name}", p
    for name, p in text_encoder.named_parameters():
        yield f"text.{name}", p


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur and noise half of the images, so the reward also reads the blurry x0-hats of early denoising steps."""
    from torchvision.transforms.functional import gaussian_blur

    half = x.shape[0] // 2
    sigma = float(torch.empty(1).uniform_(0.3, 2.0, generator=generator))
    blurred = gaussian_blur(x[:half], kernel_size=9, sigma=sigma)
    blurred = blurred + 0.1 * torch.rand(1, generator=generator) * torch.randn(blurred.shape, generator=generator)
    return torch.cat([blurred, x[half:]])


def train_clip(
    model: torch.nn.Module, tokenizer: Any, images: np.ndarray, captions: list[str], config: dict[str, Any], seed: int
) -> list[dict[str, float]]:
    """open_clip's contrastive loss on batches of distinct captions (a repeated caption would be a false negative)."""
    import open_clip

    generator = torch.Generator().manual_seed(seed)
    loss_fn = open_clip.ClipLoss()
    optimizer = _Optimizer(list(model.parameters()), config, weight_decay=0.1, warmup_steps=config["warmup_steps"])
    log = LossLog("clip", config["steps"])
    tokens = tokenizer(captions)
    model.train()
    for step in range(config["steps"]):
        order = torch.randperm(len(captions), generator=generator)[: 4 * config["batch_size"]].tolist()
        index = list({captions[i]: i for i in order}.values())[: config["batch_size"]]
        x = to_tensor(images[index])  # [-1, 1] is the model's normalisation (mean 0.5, std 0.5)
        image_features, text_features, logit_scale = model(_augment(x, generator), tokens[index])[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.step(loss)
        log.add(step, loss.item())
    model.eval()
    return log.rows


def write_log(path: Path, stage: str, rows: list[dict[str, float]], extra: dict[str, Any]) -> None:
    """Add a stage's losses to the training log (JSON) next to the weights."""
    log = json.loads(path.read_text()) if path.exists() else {}
    log[stage] = {**extra, "losses": rows}
    path.write_text(json.dumps(log, indent=1) + "\n")
