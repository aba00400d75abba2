"""diffsteer: inference-time steering of diffusion models.

    result = diffsteer.sample(model, scheduler, shape=(2,), method=diffsteer.FK(num_particles=256, lmbda=2.0),
                              reward=my_reward, num_inference_steps=50, generator=torch.Generator().manual_seed(0))

Names are imported on first use, so `import diffsteer.smc` (the pure-torch particle core) never loads diffusers.
"""

import importlib
from typing import TYPE_CHECKING, Any


__version__ = "0.1.0"

_LAZY = {
    "FK": "diffsteer.methods",
    "BestOfN": "diffsteer.methods",
    "ZeroOrder": "diffsteer.methods",
    "Paths": "diffsteer.methods",
    "SVDD": "diffsteer.methods",
    "RBF": "diffsteer.methods",
    "Guidance": "diffsteer.methods",
    "Twisted": "diffsteer.methods",
    "NoiseOpt": "diffsteer.methods",
    "make_method": "diffsteer.methods",
    "CostLedger": "diffsteer.outputs",
    "SamplingResult": "diffsteer.outputs",
    "StepRecord": "diffsteer.outputs",
    "sample": "diffsteer.sampling",
}
_SUBPACKAGES = ("methods", "pipelines", "processes", "rewards", "smc", "worlds")

__all__ = [
    "FK",
    "RBF",
    "SVDD",
    "BestOfN",
    "CostLedger",
    "Guidance",
    "NoiseOpt",
    "Paths",
    "SamplingResult",
    "StepRecord",
    "Twisted",
    "ZeroOrder",
    "__version__",
    "make_method",
    "sample",
]

if TYPE_CHECKING:
    from diffsteer.methods import FK, RBF, SVDD, BestOfN, Guidance, NoiseOpt, Paths, Twisted, ZeroOrder, make_method
    from diffsteer.outputs import CostLedger, SamplingResult, StepRecord
    from diffsteer.sampling import sample


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"diffsteer.{name}")
    raise AttributeError(f"module 'diffsteer' has no attribute {name!r}")
