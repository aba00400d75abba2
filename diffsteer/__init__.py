"""diffsteer: inference-time steering of diffusion models.

result = diffsteer.sample(model, scheduler, shape=(2,), method=diffsteer.FK(num_particles=256, lmbda=2.0),
                          reward=my_reward, num_inference_steps=50, generator=torch.Generator().manual_seed(0))
"""

from diffsteer.methods import FK, BestOfN
from diffsteer.outputs import CostLedger, SamplingResult, StepRecord
from diffsteer.sampling import sample


__version__ = "0.1.0"

__all__ = ["FK", "BestOfN", "CostLedger", "SamplingResult", "StepRecord", "__version__", "sample"]
