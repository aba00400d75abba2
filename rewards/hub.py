"""Finding reward weights: a local file, a local folder, or a hub id, with one clear error when none is reachable."""

import os
from pathlib import Path


class RewardWeightsNotFoundError(OSError):
    """The weights were neither on disk nor reachable on the hub (for example with no network or HF_HUB_OFFLINE=1)."""


def resolve_file(source: str | os.PathLike, filename: str, *, reward: str, option: str) -> Path:
    """The path of `filename` from `source`: a file itself, a folder holding it, or a hub repository id.

    Args:
        source: a local file, a local folder, or a hub id such as "THUDM/ImageReward".
        filename: the file inside the folder or repository.
        reward: the registry name, for the error message.
        option: the `load` option that takes a local path, for the error message.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise RewardWeightsNotFoundError(f"Reward {reward!r}: the folder {str(path)!r} has no {filename!r}.")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=str(source), filename=filename))
    except Exception as error:  # the hub raises many types: offline, missing repo, network, invalid id
        raise weights_error(reward, str(source), filename, option, error) from None


def weights_error(
    reward: str, repo_id: str, filename: str, option: str, error: BaseException
) -> RewardWeightsNotFoundError:
    """The offline error: the hub id tried, why it failed, and how to pass a local path instead."""
    reason = first_line(error) or type(error).__name__
    return RewardWeightsNotFoundError(
        f"Reward {reward!r}: could not get {filename!r} from the hub id {repo_id!r}{offline_note()}: {reason}. "
        f"Download it where the hub is reachable (hf download {repo_id} {filename}) and pass the local path: "
        f"diffsteer.rewards.load({reward!r}, {option}='/path/to/{filename}' or its folder)."
    )


def offline_note() -> str:
    """ " (HF_HUB_OFFLINE=1 is set)" when it is, for error messages about downloads."""
    return " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true") else ""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (library errors run to many lines of advice)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
