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

from diffsteer.worlds.shapes.captions import draw_scenes
from diffsteer.worlds.shapes.scenes import render


def render_dataset(num_scenes: int, mixed_fraction: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """`num_scenes` rendered scenes, uint8 (N, 64, 64, 3), and their captions, drawn by `draw_scenes`."""
    drawn = draw_scenes(num_scenes, mixed_fraction, np.random.default_rng(seed))
    return np.stack([render(scene) for _, _, scene in drawn]), [caption for _, caption, _ in drawn]


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

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "window": self._window, "elapsed": time.perf_counter() - self._start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a resumed log: its rows, the open window and the time already spent (so `elapsed_s` counts every
        session's training time)."""
        self.rows, self._window = list(state["rows"]), list(state["window"])
        self._start = time.perf_counter() - state["elapsed"]

    def add(self, step: int, loss: float) -> None:
        self._window.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            mean = float(np.mean(self._window))
            elapsed = time.perf_counter() - self._start
            self.rows.append({"step": step + 1, "loss": round(mean, 6), "elapsed_s": round(elapsed, 1)})
            print(f"[{self.stage}] step {step + 1}/{self.total} loss {mean:.5f} ({elapsed:.0f} s)", flush=True)
            self._window = []


class _Batches:
    """Index batches over shuffled epochs, drawing each epoch's permutation from `generator` when the previous one
    runs out (so the draws interleave with the training loop's own as they always have), with a state to resume."""

    def __init__(self, num_items: int, batch_size: int, generator: torch.Generator) -> None:
        self.num_items, self.batch_size, self.generator = num_items, batch_size, generator
        self._order = torch.empty(0, dtype=torch.long)
        self._position = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if self._position >= len(self._order):
            self._order, self._position = torch.randperm(self.num_items, generator=self.generator), 0
        batch = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"order": self._order, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order, self._position = state["order"], state["position"]


class _GeneratorState:
    """A `torch.Generator` seen as something with a state dict."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


class _TensorDict:
    """A dict of tensors (EMA weights) seen as something with a state dict; loading copies in place."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.tensors[name].copy_(value)


class Checkpoint:
    """A stage's whole training state (models, optimiser, schedule, EMA, random generator, batch order, loss log)
    saved every `every` steps, so that a run ended by a session's stop resumes where it was, bit for bit.

    Args:
        path: the file (written atomically: a partial write never replaces a good checkpoint).
        every: steps between saves; the last step is always saved.
    """

    def __init__(self, path: Path, every: int = 200) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 step, got {every}.")
        self.path, self.every = Path(path), every

    def resume(self, state: dict[str, Any]) -> int:
        """Load the saved state into `state`'s objects; the number of steps already done (0 without a file)."""
        if not self.path.exists():
            return 0
        saved = torch.load(self.path, weights_only=False)
        if set(saved["state"]) != set(state):
            raise ValueError(f"{self.path} holds {sorted(saved['state'])}, not this stage's {sorted(state)}.")
        for name, part in state.items():
            part.load_state_dict(saved["state"][name])
        print(f"resumed from {self.path} at step {saved['step']}", flush=True)
        return saved["step"]

    def save_if_due(self, steps_done: int, total: int, state: dict[str, Any]) -> None:
        if steps_done % self.every and steps_done != total:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save({"step": steps_done, "state": {name: part.state_dict() for name, part in state.items()}}, partial)
        partial.replace(self.path)


def _run(
    total: int,
    state: dict[str, Any],
    checkpoint: Checkpoint | None,
    step_fn: Callable[[int], float],
    log: LossLog,
) -> None:
    """Steps `[resumed, total)` of a stage: `step_fn(step)` returns the step's loss; the state is checkpointed."""
    state = {**state, "log": log}
    start = checkpoint.resume(state) if checkpoint else 0
    for step in range(start, total):
        log.add(step, step_fn(step))
        if checkpoint:
            checkpoint.save_if_due(step + 1, total, state)


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

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_norm)
        self.optimizer.step()
        self.schedule.step()


def train_vae(
    vae: torch.nn.Module, images: np.ndarray, config: dict[str, Any], seed: int, checkpoint: Checkpoint | None = None
) -> list[dict[str, float]]:
    """L1 reconstruction plus a small KL term, on the full 64x64 scenes (resumed from `checkpoint` if it has one)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = _Optimizer(list(vae.parameters()), config, weight_decay=0.0, warmup_steps=50)
    log = LossLog("vae", config["steps"])
    batches = _Batches(len(images), config["batch_size"], generator)
    vae.train()

    def step(_: int) -> float:
        x = to_tensor(images[next(batches).numpy()])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        loss = F.l1_loss(reconstruction, x) + config["kl_weight"] * posterior.kl().mean()
        optimizer.step(loss)
        return loss.item()

    state = {"vae": vae, "optimizer": optimizer, "generator": _GeneratorState(generator), "batches": batches}
    _run(config["steps"], state, checkpoint, step, log)
    vae.eval()
    return log.rows


def corner_weights(size: int, weight: float, width: int = 3) -> torch.Tensor:
    """A (size, size) loss weight: `weight` on the `width` x `width` pixels at each corner, 1 elsewhere.

    Why: the decoder's convolutions pad with zeros, and a corner pixel is the only one padded on two sides. Under an
    unweighted loss its error is 4 pixels in 4096, so the decoder never learns to cancel it: the shipped decoder
    tinted every corner (bottom right about (189, 204, 220) on a (245, 245, 240) background, 36 levels off on
    average). Weighted 300 times, 150 fine-tuning steps bring the corner error to about 1 level.
    """
    if weight < 1:
        raise ValueError(f"corner_weight must be at least 1, got {weight}.")
    weights = torch.ones(size, size)
    for rows in (slice(0, width), slice(size - width, size)):
        for columns in (slice(0, width), slice(size - width, size)):
            weights[rows, columns] = weight
    return weights


def train_decoder(
    vae: torch.nn.Module,
    images: np.ndarray,
    config: dict[str, Any],
    seed: int,
    checkpoint: Checkpoint | None = None,
    stage: str = "decoder",
) -> list[dict[str, float]]:
    """Fine-tune the decoder alone (L1 plus squared error) with the encoder frozen.

    The latents stay exactly what the UNet trains on, so this stage can run before or after the UNet. Squared error
    weighs the large, rare errors inside shapes (a red triangle decoded with an orange core) that L1 leaves.
    `config["corner_weight"]` (if given) weighs the 3x3 pixels at each corner that much more: see `corner_weights`.
    """
    generator = torch.Generator().manual_seed(seed)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.requires_grad_(False)
    for parameter in decoder:
        parameter.requires_grad_(True)
    optimizer = _Optimizer(decoder, config, weight_decay=0.0, warmup_steps=50)
    log = LossLog(stage, config["steps"])
    batches = _Batches(len(images), config["batch_size"], generator)
    vae.eval()  # no dropout or batch statistics in either half; gradients flow through the decoder only
    weight = config.get("corner_weight")
    weights = None if weight is None else corner_weights(images.shape[1], weight)

    def step(_: int) -> float:
        x = to_tensor(images[next(batches).numpy()])
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        if weights is None:
            loss = F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x)
        else:
            error = reconstruction - x
            loss = ((error.abs() + error.square()) * weights).mean() / weights.mean()
        optimizer.step(loss)
        return loss.item()

    state = {"vae": vae, "optimizer": optimizer, "generator": _GeneratorState(generator), "batches": batches}
    _run(config["steps"], state, checkpoint, step, log)
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
    checkpoint: Checkpoint | None = None,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Epsilon or v prediction (as the scheduler says) on scaled latents, with the text encoder trained jointly and
    captions dropped to "" at `caption_dropout` (classifier-free guidance). Returns the log and the EMA weights of
    both models (resumed from `checkpoint` if it has one)."""
    generator = torch.Generator().manual_seed(seed)
    means, stds = latents
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = _Optimizer(parameters, config, weight_decay=1e-2, warmup_steps=config["warmup_steps"], clip_norm=1.0)
    ema = {name: p.detach().clone() for name, p in _named(unet, text_encoder)}
    log = LossLog("unet", config["steps"])
    batches = _Batches(len(captions), config["batch_size"], generator)
    unet.train()
    text_encoder.train()
    tokens = tokenizer(
        [*captions, ""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    )
    caption_ids, empty_ids = tokens.input_ids[:-1], tokens.input_ids[-1]

    def step(step: int) -> float:
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
        return loss.item()

    state = {
        "unet": unet,
        "text_encoder": text_encoder,
        "optimizer": optimizer,
        "ema": _TensorDict(ema),
        "generator": _GeneratorState(generator),
        "batches": batches,
    }
    _run(config["steps"], state, checkpoint, step, log)
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


def _distinct_caption_batch(captions: list[str], batch_size: int, generator: torch.Generator) -> list[int]:
    """Indices of up to `batch_size` items with distinct captions, in a random order (a repeated caption would be a
    false negative of a contrastive loss)."""
    order = torch.randperm(len(captions), generator=generator)[: 4 * batch_size].tolist()
    return list({captions[i]: i for i in order}.values())[:batch_size]


def negclip_loss(
    image_features: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    padding: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """NegCLIP's contrastive loss on normalised features: image i's softmax runs over the B captions of the batch
    (`positive`, (B, D); its own is i) and its own K false captions (`negative`, (B, K, D); those where `padding`,
    (B, K), is true are left out); the text-to-image direction runs over the B images alone."""
    to_batch = scale * image_features @ positive.T
    to_own = scale * torch.einsum("bd,bkd->bk", image_features, negative)
    logits = torch.cat([to_batch, to_own.masked_fill(padding, -torch.inf)], dim=1)
    labels = torch.arange(len(image_features))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(to_batch.T, labels)) / 2


def train_clip(
    model: torch.nn.Module,
    tokenizer: Any,
    images: np.ndarray,
    captions: list[str],
    config: dict[str, Any],
    seed: int,
    checkpoint: Checkpoint | None = None,
) -> list[dict[str, float]]:
    """open_clip's contrastive loss on batches of distinct captions (a repeated caption would be a false negative)."""
    import open_clip

    generator = torch.Generator().manual_seed(seed)
    loss_fn = open_clip.ClipLoss()
    optimizer = _Optimizer(list(model.parameters()), config, weight_decay=0.1, warmup_steps=config["warmup_steps"])
    log = LossLog("clip", config["steps"])
    tokens = tokenizer(captions)
    model.train()

    def step(_: int) -> float:
        index = _distinct_caption_batch(captions, config["batch_size"], generator)
        x = to_tensor(images[index])  # [-1, 1] is the model's normalisation (mean 0.5, std 0.5)
        image_features, text_features, logit_scale = model(_augment(x, generator), tokens[index])[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.step(loss)
        return loss.item()

    state = {"clip": model, "optimizer": optimizer, "generator": _GeneratorState(generator)}
    _run(config["steps"], state, checkpoint, step, log)
    model.eval()
    return log.rows


def train_negclip(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: list[Any],
    config: dict[str, Any],
    seed: int,
    checkpoint: Checkpoint | None = None,
) -> list[dict[str, float]]:
    """Fine-tune a CLIP with hard negatives, as NegCLIP does (Yuksekgonul et al., 2023): each image's row of the
    contrastive loss holds the batch's captions and also the image's own one-edit false captions, so the embedding
    has to keep the colour, shape, count, relation and size apart that a batch of random captions rarely contrasts.
    The text-to-image direction is open_clip's. Batches have distinct captions (a repeated caption would be a false
    negative); half the images are blurred and noised as early x0-hats are (`_augment`)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = _Optimizer(list(model.parameters()), config, weight_decay=0.1, warmup_steps=config["warmup_steps"])
    log = LossLog("negclip", config["steps"])
    images = np.stack([example.image for example in examples])
    captions = [example.positives[0] for example in examples]
    most = max(len(example.negatives) for example in examples)
    model.train()

    def step(_: int) -> float:
        index = _distinct_caption_batch(captions, config["batch_size"], generator)
        negatives = [list(examples[i].negatives) for i in index]
        # Pad every image's negatives to the same count with its own caption, masked out of the softmax below.
        padded = [own + [captions[i]] * (most - len(own)) for i, own in zip(index, negatives, strict=True)]
        texts = [captions[i] for i in index] + [caption for own in padded for caption in own]
        image_features = model.encode_image(_augment(to_tensor(images[index]), generator), normalize=True)
        text_features = model.encode_text(tokenizer(texts), normalize=True)
        batch = len(index)
        padding = torch.tensor([[k >= len(own) for k in range(most)] for own in negatives])
        loss = negclip_loss(
            image_features,
            text_features[:batch],
            text_features[batch:].view(batch, most, -1),
            padding,
            model.logit_scale.exp(),
        )
        optimizer.step(loss)
        return loss.item()

    state = {"negclip": model, "optimizer": optimizer, "generator": _GeneratorState(generator)}
    _run(config["steps"], state, checkpoint, step, log)
    model.eval()
    return log.rows


def train_itm(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: list[Any],
    config: dict[str, Any],
    seed: int,
    checkpoint: Checkpoint | None = None,
) -> list[dict[str, float]]:
    """Binary cross-entropy of image-text matching: each image of a batch with one of its true captions (label 1)
    and one of its false ones (label 0), half the images blurred and noised as early x0-hats are (`_augment`)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = _Optimizer(list(model.parameters()), config, weight_decay=0.05, warmup_steps=config["warmup_steps"])
    log = LossLog("itm", config["steps"])
    batches = _Batches(len(examples), config["batch_size"], generator)
    images = np.stack([example.image for example in examples])
    model.train()

    def pick(options: tuple[str, ...]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    def step(_: int) -> float:
        index = next(batches).tolist()
        chosen = [examples[i] for i in index]
        x = _augment(to_tensor(images[index]), generator)
        captions, labels = [], []
        for example in chosen:  # a true caption and a false one per image (a second true one if it has no false)
            captions += [pick(example.positives), pick(example.negatives or example.positives)]
            labels += [1.0, float(not example.negatives)]
        tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        logits = model(x, tokens.input_ids, tokens.attention_mask, captions_per_image=2)
        loss = F.binary_cross_entropy_with_logits(logits, torch.tensor(labels))
        optimizer.step(loss)
        return loss.item()

    state = {"itm": model, "optimizer": optimizer, "generator": _GeneratorState(generator), "batches": batches}
    _run(config["steps"], state, checkpoint, step, log)
    model.eval()
    return log.rows


def roundtrip(vae: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Images encoded (posterior mean) and decoded by the world's autoencoder: uint8 in, uint8 out, with the
    decoder's own look (soft edges, its colour drift, its corner tint)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_tensor(images[start : start + batch_size])
            decoded = vae.decode(vae.encode(x).latent_dist.mean).sample
            out.append(((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def train_detect(
    model: torch.nn.Module,
    images: np.ndarray,
    kinds: np.ndarray,
    colors: np.ndarray,
    config: dict[str, Any],
    seed: int,
    checkpoint: Checkpoint | None = None,
) -> list[dict[str, float]]:
    """Per-pixel cross-entropy of kind and colour (`shapes_detect.segmentation_loss`), half of each batch blurred
    and noised as early x0-hats are (`_augment`) with its labels kept: the segmenter learns to read the shapes a
    blurry image will become."""
    from diffsteer.rewards.shapes_detect import segmentation_loss

    generator = torch.Generator().manual_seed(seed)
    optimizer = _Optimizer(list(model.parameters()), config, weight_decay=0.01, warmup_steps=config["warmup_steps"])
    log = LossLog("detect", config["steps"])
    batches = _Batches(len(images), config["batch_size"], generator)
    model.train()

    def step(_: int) -> float:
        index = next(batches).numpy()
        x = _augment(to_tensor(images[index]), generator)
        loss = segmentation_loss(model, x, torch.from_numpy(kinds[index]), torch.from_numpy(colors[index]))
        optimizer.step(loss)
        return loss.item()

    state = {"detect": model, "optimizer": optimizer, "generator": _GeneratorState(generator), "batches": batches}
    _run(config["steps"], state, checkpoint, step, log)
    model.eval()
    return log.rows


def write_log(path: Path, stage: str, rows: list[dict[str, float]], extra: dict[str, Any]) -> None:
    """Add a stage's losses to the training log (JSON) next to the weights."""
    log = json.loads(path.read_text()) if path.exists() else {}
    log[stage] = {**extra, "losses": rows}
    path.write_text(json.dumps(log, indent=1) + "\n")
