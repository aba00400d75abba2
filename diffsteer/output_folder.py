"""The output folder of `diffsteer generate`, written whole or not at all.

The run writes into a temporary folder beside `--out` and swaps it in (`write_outputs`), so a reader never sees files
of two runs mixed, and an interrupted or failed run leaves the earlier output as it was.
"""

import contextlib
import io
import json
import math
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


# The files a run writes; a folder holding anything else is not a diffsteer output, and is never replaced.
OUTPUT_FILE = re.compile(r"image\.png|summary\.json|particle-\d+\.png")


def check_out(out_dir: str | os.PathLike) -> Path:
    """Check, before any compute, that a run can write `out_dir`; returns its resolved path.

    The check is the real operation: it creates (and removes) the temporary folder beside `out_dir` that
    `write_outputs` will write into. Missing parent folders are created, as `mkdir -p` would.

    Raises:
        ValueError: one line naming `--out` and the fix: a file in the way, a folder holding files diffsteer did not
            write (the run replaces the folder whole, so it never replaces one of those), or a parent folder that
            cannot take a new folder.
    """
    if not str(out_dir).strip():
        raise ValueError("--out is empty; pass the folder to write, e.g. --out diffsteer-output.")
    path = Path(out_dir).resolve()
    _check_replaceable(path, str(out_dir))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _sigint_deferred():  # the probe folder goes even if Ctrl-C comes while it exists
            _staging_folder(path).rmdir()
    except OSError as error:
        raise ValueError(
            f"--out {str(out_dir)!r} cannot be written: no new folder can be made in {path.parent} "
            f"({error.strerror or error}); pass an --out inside a folder you can write to."
        ) from None
    return path


def _check_replaceable(path: Path, out_dir: str) -> None:
    """Refuse to replace a file, or a folder holding anything but a diffsteer output's files."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out_dir!r} is a file; pass a folder path (the run writes a folder of images).")
    if path.is_dir():
        foreign = sorted(entry.name for entry in path.iterdir() if not OUTPUT_FILE.fullmatch(entry.name))
        if foreign:
            raise ValueError(
                f"--out {out_dir!r} holds files diffsteer did not write ({', '.join(map(repr, foreign[:3]))}"
                f"{', ...' if len(foreign) > 3 else ''}); a run replaces its folder whole, so pass a new folder, an "
                "empty one or an earlier diffsteer output."
            )


def write_outputs(out_dir: str | os.PathLike, output: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Save every particle, the selected image and `summary.json` as the folder `out_dir`, whole or not at all.

    The files go into a temporary folder beside `out_dir` (same parent, so renames are atomic), which is then swapped
    in; files of an earlier run in `out_dir` (stale `particle-*.png` included) go with the old folder. On any
    failure or interruption the temporary folder is removed and an earlier `out_dir` is left as it was.
    `image.png` is a byte-for-byte copy of the selected particle's file.

    Returns:
        The summary with the file names added.

    Raises:
        OSError: one line naming the file that could not be written and why (a full disk, ...).
        ValueError: when `out_dir` has become a file, or a folder holding files diffsteer did not write.
    """
    path = Path(out_dir).resolve()
    selected = int(output.selected_indices[0, 0])
    particles = [f"particle-{index}.png" for index in range(len(output.particles))]
    summary = {**summary, "files": {"image": "image.png", "particles": particles, "summary": "summary.json"}}
    kept = "the earlier output is unchanged" if path.exists() else "nothing was written"
    staging = None
    try:
        with _sigint_deferred():  # no Ctrl-C between making the folder and knowing its name (to remove it)
            staging = _make_folder_beside(path, str(out_dir))
        for name, data in _output_files(output.particles, selected, summary):
            try:
                _write_file(staging / name, data)
            except OSError as error:
                raise OSError(
                    f"could not write {name} of --out {str(out_dir)!r} ({error.strerror or error}); {kept}."
                ) from error
        _check_replaceable(path, str(out_dir))  # again: files may have come into --out while the model ran
        _swap_in(staging, path)
    except BaseException:
        if staging is not None:
            with _sigint_deferred():  # a second Ctrl-C must not stop the clean-up half-way
                shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _make_folder_beside(path: Path, out_dir: str) -> Path:
    try:
        return _staging_folder(path)
    except OSError as error:
        raise OSError(f"could not make a folder beside --out {out_dir!r} ({error.strerror or error}).") from error


def _output_files(images: list[Any], selected: int, summary: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file of a run, one image encoded at a time; the summary comes last."""
    for index, image in enumerate(images):
        data = _png(image)
        yield f"particle-{index}.png", data
        if index == selected:
            yield "image.png", data  # the very same bytes: the selected particle, not a second decode of it
    yield "summary.json", (json.dumps(_strict_json(summary), indent=2, allow_nan=False) + "\n").encode()


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    """Write a new file and flush it to disk, so that after the swap a crash cannot leave it empty."""
    with open(path, "xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _staging_folder(path: Path) -> Path:
    """A new, empty, hidden folder beside `path`: `.NAME.XXXXXXXX.tmp`.

    Made with `mkdir` rather than `tempfile.mkdtemp`, so that once swapped in it has the permissions of any new
    folder (mkdtemp's are private to the user).
    """
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {path}")


def _swap_in(staging: Path, path: Path) -> None:
    """Rename `staging` to `path`, moving an earlier `path` aside first and deleting it after.

    A folder cannot be renamed over a non-empty one, so replacing takes two renames. A crash between them leaves the
    earlier run under `.NAME.XXXXXXXX.old` and the new one, complete, under `.NAME.XXXXXXXX.tmp`, both beside
    `path`; nothing is mixed. Ctrl-C is held until the swap is done, so only a crash can stop it half-way; if the
    second rename fails, the earlier run is renamed back.
    """
    with _sigint_deferred():
        if not path.exists():
            os.rename(staging, path)
        else:
            aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
            os.rename(path, aside)
            try:
                os.rename(staging, path)
            except BaseException:
                os.rename(aside, path)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable (POSIX; other systems do without)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) until the block ends, then deliver it; outside the main thread signals cannot be caught,
    so the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if received:
            signal.raise_signal(signal.SIGINT)


def _strict_json(value: Any) -> Any:
    """`value` with every NaN or infinite float as None: strict JSON has no such numbers (a reward of -inf, which
    gives a particle zero weight, is written as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value
