"""`python -m diffsteer.worlds.shapes train --config configs/shapes.yaml`: train the shapes world.

Stages: `vae` (the autoencoder), `decoder` (its decoder fine-tuned with the encoder frozen, so the latents do not
change), `corners` (the decoder once more, its corner pixels weighted, against the corner tint), `unet` (the UNet
and text encoder on the autoencoder's latents), `clip` (the `shapes-clip` reward), `negclip` (`shapes-negclip`:
that CLIP fine-tuned against hard-negative captions), `itm` (the `shapes-itm` reward), `detect` (the segmenter of
the `shapes-detect` reward); `all` runs them in order.
Weights go to `--out` (by default the package's own folder, which is what ships), with the
losses in `training_log.json`.

Every stage saves its whole training state every `--checkpoint-every` steps under `--cache`/checkpoints (one folder
per recipe). A run ended early (a session's stop) goes on with `--resume`, bit for bit as if it had not stopped; a
finished stage resumes at its end and only writes its weights again. Without `--resume` a stage starts afresh.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from diffsteer.worlds.shapes import CLIP_PATH, DETECT_PATH, ITM_PATH, MODEL_PATH, NEGCLIP_PATH


if TYPE_CHECKING:
    from diffsteer.worlds.shapes.training import Checkpoint


STAGES = ("vae", "decoder", "corners", "unet", "clip", "negclip", "itm", "detect")


def _dataset(config: dict, cache: Path) -> tuple[np.ndarray, list[str]]:
    from diffsteer.worlds.shapes.training import render_dataset

    key = hashlib.sha1(json.dumps([config["data"], config["seed"]], sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"shapes-scenes-{key}.npz"
    if path.exists():
        data = np.load(path)
        return data["images"], data["captions"].tolist()
    print(f"rendering {config['data']['scenes']} scenes ...", flush=True)
    images, captions = render_dataset(config["data"]["scenes"], config["data"]["mixed_fraction"], config["seed"])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, captions=np.array(captions))
    return images, captions


def _checkpoint(config: dict, cache: Path, stage: str, resume: bool, every: int) -> "Checkpoint":
    from diffsteer.worlds.shapes import training

    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    path = cache / "checkpoints" / key / f"{stage}.pt"
    if not resume:
        path.unlink(missing_ok=True)
    return training.Checkpoint(path, every)


def _save_clip(model: torch.nn.Module, directory: Path, architecture_from: Path) -> None:
    """An open_clip model in the folder `ShapesCLIP` loads: its architecture file and its weights."""
    import shutil

    from safetensors.torch import save_file

    from diffsteer.rewards.shapes import CLIP_MODEL_NAME

    directory.mkdir(parents=True, exist_ok=True)
    if directory != architecture_from:
        shutil.copy(architecture_from / f"{CLIP_MODEL_NAME}.json", directory)
    # Half precision on disk halves the file (the 49408-token embedding is most of it); loading casts back.
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors")


def train(
    config_path: Path, out: Path, stages: list[str], cache: Path, resume: bool = False, checkpoint_every: int = 200
) -> None:
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from diffsteer.worlds.shapes import components as build
    from diffsteer.worlds.shapes import training

    config = yaml.safe_load(config_path.read_text())
    seed = config["seed"]

    def checkpoint(stage: str) -> "Checkpoint":
        return _checkpoint(config, cache, stage, resume, checkpoint_every)

    images, captions = _dataset(config, cache)
    pipeline_dir, clip_dir, itm_dir = out / MODEL_PATH.name, out / CLIP_PATH.name, out / ITM_PATH.name
    negclip_dir = out / NEGCLIP_PATH.name
    if "vae" in stages:
        torch.manual_seed(seed)
        vae = build.build_vae(config["vae"]["model"])
        rows = training.train_vae(vae, images, config["vae"], seed, checkpoint("vae"))
        vae.save_pretrained(pipeline_dir / "vae")
        training.write_log(pipeline_dir / "training_log.json", "vae", rows, {"config": config["vae"]})
    if "decoder" in stages:
        vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae")
        rows = training.train_decoder(vae, images, config["decoder"], seed + 3, checkpoint("decoder"))
        vae.save_pretrained(pipeline_dir / "vae")
        training.write_log(pipeline_dir / "training_log.json", "decoder", rows, {"config": config["decoder"]})
    if "corners" in stages:
        vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae")
        rows = training.train_decoder(vae, images, config["corners"], seed + 6, checkpoint("corners"), "corners")
        vae.save_pretrained(pipeline_dir / "vae")
        training.write_log(pipeline_dir / "training_log.json", "corners", rows, {"config": config["corners"]})
    if "unet" in stages:
        vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae").eval()
        means, stds = training.encode_latents(vae, images)
        scaling_factor = round(1.0 / float(means.std()), 5)
        vae.register_to_config(scaling_factor=scaling_factor)
        torch.manual_seed(seed + 1)
        tokenizer = build.build_tokenizer(pipeline_dir / "tokenizer")
        text_encoder = build.build_text_encoder(tokenizer, config["text_encoder"])
        unet = build.build_unet(config["unet"]["model"])
        scheduler = build.build_scheduler(config["scheduler"])
        unet_config = {**config["unet"], "scaling_factor": scaling_factor}
        rows, unet_ema, text_ema = training.train_unet(
            unet,
            text_encoder,
            tokenizer,
            scheduler,
            (means, stds),
            captions,
            unet_config,
            seed + 1,
            checkpoint("unet"),
        )
        unet.load_state_dict(unet_ema, strict=False)
        text_encoder.load_state_dict(text_ema, strict=False)
        pipeline = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(pipeline_dir)
        extra = {"config": config["unet"], "scaling_factor": scaling_factor, "text_encoder": config["text_encoder"]}
        training.write_log(pipeline_dir / "training_log.json", "unet", rows, extra)
    if "clip" in stages:
        import open_clip

        from diffsteer.rewards.shapes import CLIP_MODEL_NAME, register_open_clip_config

        clip_dir.mkdir(parents=True, exist_ok=True)
        architecture = json.dumps(build.open_clip_config(config["clip"]), indent=1)
        (clip_dir / f"{CLIP_MODEL_NAME}.json").write_text(architecture + "\n")
        register_open_clip_config(clip_dir)
        torch.manual_seed(seed + 2)
        model = open_clip.create_model(CLIP_MODEL_NAME, pretrained=None)
        tokenizer = open_clip.get_tokenizer(CLIP_MODEL_NAME)
        rows = training.train_clip(model, tokenizer, images, captions, config["clip"], seed + 2, checkpoint("clip"))
        _save_clip(model, clip_dir, clip_dir)
        training.write_log(clip_dir / "training_log.json", "clip", rows, {"config": config["clip"]})
    if "negclip" in stages:
        import open_clip

        from diffsteer.rewards.shapes import CLIP_MODEL_NAME, ShapesCLIP
        from diffsteer.worlds.shapes.matching import matching_dataset

        negclip = config["negclip"]
        print(f"drawing {negclip['scenes']} scenes with true and false captions ...", flush=True)
        examples = matching_dataset(
            negclip["scenes"],
            config["data"]["mixed_fraction"],
            seed + 5,
            negclip["degraded_fraction"],
            rounded_fraction=negclip.get("rounded_fraction", 0.0),
        )
        model = ShapesCLIP(clip_dir).model.requires_grad_(True)  # starts from the `clip` stage's weights
        tokenizer = open_clip.get_tokenizer(CLIP_MODEL_NAME)
        rows = training.train_negclip(model, tokenizer, examples, negclip, seed + 5, checkpoint("negclip"))
        _save_clip(model, negclip_dir, clip_dir)
        training.write_log(negclip_dir / "training_log.json", "negclip", rows, {"config": negclip})
    if "itm" in stages:
        from diffsteer.rewards.shapes_itm import MatcherConfig, ShapesMatcher, save_matcher
        from diffsteer.worlds.shapes.matching import matching_dataset

        itm = config["itm"]
        print(f"drawing {itm['scenes']} scenes with true and false captions ...", flush=True)
        examples = matching_dataset(
            itm["scenes"], config["data"]["mixed_fraction"], seed + 4, itm["degraded_fraction"]
        )
        tokenizer = build.build_tokenizer(itm_dir / "tokenizer")
        torch.manual_seed(seed + 4)
        model = ShapesMatcher(
            MatcherConfig(
                **itm["model"],
                max_tokens=tokenizer.model_max_length,
                vocab_size=len(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        rows = training.train_itm(model, tokenizer, examples, itm, seed + 4, checkpoint("itm"))
        save_matcher(model, itm_dir, tokenizer)
        training.write_log(itm_dir / "training_log.json", "itm", rows, {"config": itm})
    if "detect" in stages:
        from diffsteer.rewards.shapes_detect import SegmenterConfig, ShapesSegmenter, save_segmenter
        from diffsteer.worlds.shapes.segmentation import segmentation_dataset

        detect = config["detect"]
        print(f"drawing {detect['scenes']} labelled scenes ...", flush=True)
        examples = segmentation_dataset(
            detect["scenes"], config["data"]["mixed_fraction"], seed + 6, detect["degraded_fraction"]
        )
        scenes = np.stack([example.image for example in examples])
        # A share of the scenes drawn through the world's own autoencoder, for the decoder's look (the labels stay).
        chosen = np.random.default_rng(seed + 6).random(len(examples)) < detect["roundtrip_fraction"]
        vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae").eval()
        scenes[chosen] = training.roundtrip(vae, scenes[chosen])
        torch.manual_seed(seed + 6)
        model = ShapesSegmenter(SegmenterConfig(widths=tuple(detect["model"]["widths"])))
        kinds = np.stack([example.kinds for example in examples])
        colors = np.stack([example.colors for example in examples])
        rows = training.train_detect(model, scenes, kinds, colors, detect, seed + 6, checkpoint("detect"))
        detect_dir = out / DETECT_PATH.name
        save_segmenter(model, detect_dir)
        training.write_log(detect_dir / "training_log.json", "detect", rows, {"config": detect})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffsteer.worlds.shapes", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("train", help="train the shapes world's model and CLIP reward from a YAML config")
    command.add_argument("--config", type=Path, default=Path("configs/shapes.yaml"), help="the training recipe")
    command.add_argument("--out", type=Path, default=MODEL_PATH.parent, help="where the weights go (the package)")
    command.add_argument("--stage", choices=[*STAGES, "all"], default="all", help="train one stage, or all in order")
    command.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "diffsteer", help="where rendered scenes are cached"
    )
    command.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    command.add_argument("--resume", action="store_true", help="go on from each stage's last checkpoint")
    command.add_argument(
        "--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200; the last is saved)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.config.exists():
        print(f"python -m diffsteer.worlds.shapes: error: no config file {args.config}", file=sys.stderr)
        return 2
    if args.checkpoint_every < 1:
        print("python -m diffsteer.worlds.shapes: error: --checkpoint-every must be at least 1", file=sys.stderr)
        return 2
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    train(args.config, args.out, stages, args.cache, args.resume, args.checkpoint_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
