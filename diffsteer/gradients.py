"""The differentiable path: the gradient of a reward through x0-hat (and, where asked, through the denoiser), taken
in chunks under `torch.enable_grad()` only where a method asks for it.

Every entry point runs its loop under `torch.no_grad()`; a gradient method opens `enable_grad` for one chunk of rows
at a time, so memory holds one chunk's graph (model, decoder and reward activations), never the population's.

    values, grads = chunked_gradient(objective, x, chunk_size=16)

`objective(x_chunk, rows)` maps a chunk of rows (a leaf tensor that requires grad) to one score per row; the result
is every row's score and d score / d row. Rows must not interact: the gradient of the chunk's summed score is each
row's own gradient only when score i depends on row i alone (a reward that ranks its batch, such as a rank
ensemble, breaks that, and is refused by the rewards' `differentiable` flag).

A reward that gives no gradient is refused with `NotDifferentiableError`: a registry reward marked
non-differentiable (checked where the method is set up) or a callable whose output does not depend on its input
through autograd (checked here, on the first chunk).
"""

from collections.abc import Callable

import torch


# objective(x_chunk, rows) -> scores of the chunk, shape (len(rows),) or (len(rows), 1), with autograd history
Objective = Callable[[torch.Tensor, slice], torch.Tensor]

# What one backward row (the gradient with respect to the input) costs, in forward rows of the denoiser. Measured once
# by `benchmarks/gradients.py` on the shapes UNet under classifier-free guidance, 2 CPU cores, median of 15 runs at
# timesteps 900, 500 and 100: forward + backward took 2.18 forwards over 8 rows and 2.20 over 32 (2.15 with the
# weights left trainable: `torch.autograd.grad` with respect to the input skips the weights' gradients). A backward
# pass is about one more forward's arithmetic (a product with each weight's transpose). Not measured on a GPU here.
# It is a constant, not measured at run time, so the same seed gives the same budget plan and the same output on
# every machine.
BACKWARD_COST = 1.2


class NotDifferentiableError(ValueError):
    """The reward (or the path to it) gives no gradient with respect to its input."""


def require_gradient(values: object, what: str) -> torch.Tensor:
    """`values`, if they are a tensor with autograd history; else `NotDifferentiableError` naming `what`."""
    if not isinstance(values, torch.Tensor) or not values.requires_grad:
        raise NotDifferentiableError(
            f"{what} gives no gradient: its output does not depend on its input through autograd (it returned a "
            "tensor without grad history, or a non-tensor; a reward computed in numpy, under torch.no_grad() or "
            "through .detach() does this). Use a differentiable reward, or a derivative-free method (fk, bon, "
            "zero-order, paths, svdd)."
        )
    return values


def chunked_gradient(
    objective: Objective, x: torch.Tensor, *, chunk_size: int | None = None, what: str = "the reward"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's score and its gradient with respect to the row, `chunk_size` rows at a time.

    Args:
        objective: `objective(x_chunk, rows)`, one score per row of the chunk (rows is the chunk's slice of `x`,
            for objectives that read per-row data such as conditioning or prompts).
        x: shape (N, *shape); not modified.
        chunk_size: rows per backward pass (None: all at once).
        what: names the objective in errors ("reward 'shapes-detect'").

    Returns:
        scores (float64, shape (N,), detached) and gradients (x's shape and dtype, detached).

    Raises:
        NotDifferentiableError: if the scores do not depend on the input through autograd.
        ValueError: for scores of the wrong shape.
    """
    num_rows = x.shape[0]
    size = num_rows if chunk_size is None else max(1, min(int(chunk_size), num_rows))
    scores, grads = [], []
    for start in range(0, num_rows, size):
        rows = slice(start, min(start + size, num_rows))
        with torch.enable_grad():
            leaf = x[rows].detach().requires_grad_(True)
            values = require_gradient(objective(leaf, rows), what)
            length = rows.stop - rows.start
            if tuple(values.shape) not in ((length,), (length, 1)):
                raise ValueError(
                    f"{what} must return one score per row, shape ({length},) or ({length}, 1); it returned shape "
                    f"{tuple(values.shape)}."
                )
            (grad,) = torch.autograd.grad(values.sum(), leaf, allow_unused=True)
        if grad is None:
            raise NotDifferentiableError(f"{what} gives no gradient: its output does not depend on its input.")
        scores.append(values.detach().reshape(length).to(torch.float64))
        grads.append(grad.detach())
    return torch.cat(scores), torch.cat(grads)
