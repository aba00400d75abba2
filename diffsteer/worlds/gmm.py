"""A Gaussian mixture world: exact denoisers for any scheduler, and a closed-form reward-tilted target.

If x0 ~ sum_k pi_k N(mu_k, Sigma_k) and x_t = s x0 + n eps, then x_t is again a Gaussian mixture (means s mu_k,
covariances s^2 Sigma_k + n^2 I), so the posterior mean E[x0 | x_t] (Tweedie), the exact noise predictor and the
exact velocity are available in closed form.

For a linear reward r(x) = a . x the tilted density p(x) exp(lambda r(x)) / Z is again a Gaussian mixture:
weights pi_k exp(lambda a.mu_k + lambda^2 a' Sigma_k a / 2) (normalised), means mu_k + lambda Sigma_k a, the same
covariances, and log Z = logsumexp_k(log pi_k + lambda a.mu_k + lambda^2 a' Sigma_k a / 2). FK steering's claim, that
its weighted particles target this density, is tested against these numbers.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffsteer.processes.schedulers import scheduler_spec
from diffsteer.processes.x0 import alpha_bar, flow_sigma
from diffsteer.smc.checks import check_int, check_number, check_type


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture of full-covariance Gaussians in float64.

    Args:
        weights (`Tensor`): mixture weights, shape (K,), summing to one.
        means (`Tensor`): component means, shape (K, d).
        covariances (`Tensor`): component covariances, shape (K, d, d), symmetric positive definite.
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("weights", "means", "covariances"):
            check_type(name, getattr(self, name), torch.Tensor, "a torch.Tensor")
        weights, means, covariances = (t.to(torch.float64) for t in (self.weights, self.means, self.covariances))
        if means.ndim != 2 or means.shape[0] == 0:
            raise ValueError(f"means must have shape (K, d) with K >= 1 components, got {tuple(means.shape)}.")
        num_components, dim = means.shape
        if weights.shape != (num_components,) or covariances.shape != (num_components, dim, dim):
            raise ValueError(
                f"Expected weights ({num_components},) and covariances ({num_components}, {dim}, {dim}) for means "
                f"{tuple(means.shape)}; got {tuple(weights.shape)} and {tuple(covariances.shape)}."
            )
        for name, tensor in (("weights", weights), ("means", means), ("covariances", covariances)):
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{name} must be finite, got {tensor.tolist()}.")
        if (weights < 0).any() or not math.isclose(float(weights.sum()), 1.0, abs_tol=1e-6):
            raise ValueError(f"weights must be non-negative and sum to one, got {weights.tolist()}.")
        object.__setattr__(self, "weights", weights / weights.sum())
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "covariances", covariances)

    @classmethod
    def isotropic(cls, weights: list[float], means: list[list[float]], std: float | list[float]) -> "GaussianMixture":
        """A mixture with covariances std_k^2 I."""
        means_t = torch.tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(std, dtype=torch.float64).expand(means_t.shape[0])
        if not (torch.isfinite(stds) & (stds > 0)).all():
            raise ValueError(f"std must be positive and finite, got {std!r}.")
        eye = torch.eye(means_t.shape[1], dtype=torch.float64)
        return cls(torch.tensor(weights, dtype=torch.float64), means_t, stds[:, None, None] ** 2 * eye)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def noised(self, scale: float, noise_std: float) -> "GaussianMixture":
        """The law of scale * x0 + noise_std * eps."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, scale * self.means, scale**2 * self.covariances + noise_std**2 * eye)

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log pi_k + log N(x; mu_k, Sigma_k), shape (n, K)."""
        x = x.to(torch.float64).reshape(-1, self.dim)
        cholesky = torch.linalg.cholesky(self.covariances)
        centred = (x[:, None, :] - self.means[None]).unsqueeze(-1)  # (n, K, d, 1)
        whitened = torch.linalg.solve_triangular(cholesky[None], centred, upper=False).squeeze(-1)
        log_det = 2 * torch.log(torch.diagonal(cholesky, dim1=-2, dim2=-1)).sum(-1)
        log_normal = -0.5 * (whitened.pow(2).sum(-1) + log_det + self.dim * math.log(2 * math.pi))
        return torch.log(self.weights) + log_normal

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.component_log_probs(x), dim=-1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """P(component k | x), shape (n, K)."""
        return torch.softmax(self.component_log_probs(x), dim=-1)

    def mode_weights(self, samples: torch.Tensor, log_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Estimate of this mixture's mode weights from (weighted) samples: sum_i W_i P(k | x_i), shape (K,).

        Its exact expectation under the mixture is the mode weights themselves, so no assignment of samples to
        modes (and no separation between modes) is needed. `log_weights` default to uniform.
        """
        responsibilities = self.responsibilities(samples)
        if log_weights is None:
            return responsibilities.mean(0)
        weights = torch.softmax(log_weights.to(torch.float64), dim=0)
        return (weights[:, None] * responsibilities).sum(0)

    def posterior_mean(self, x_t: torch.Tensor, scale: float, noise_std: float) -> torch.Tensor:
        """E[x0 | x_t] for x_t = scale * x0 + noise_std * eps, shape (n, d)."""
        noisy = self.noised(scale, noise_std)
        x = x_t.to(torch.float64).reshape(-1, self.dim)
        gamma = noisy.responsibilities(x)  # (n, K)
        # Per component: mu_k + scale Sigma_k C_k^{-1} (x - scale mu_k), with C_k = scale^2 Sigma_k + noise_std^2 I.
        residual = (x[:, None, :] - scale * self.means[None]).unsqueeze(-1)
        solved = torch.linalg.solve(noisy.covariances[None], residual)
        component_means = self.means[None] + scale * (self.covariances[None] @ solved).squeeze(-1)
        return (gamma[..., None] * component_means).sum(1)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples, shape (num_samples, d)."""
        num_samples = check_int("num_samples", num_samples, minimum=1)
        components = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, self.dim, generator=generator, dtype=torch.float64)
        cholesky = torch.linalg.cholesky(self.covariances)[components]
        return self.means[components] + (cholesky @ noise.unsqueeze(-1)).squeeze(-1)

    def tilt(self, direction: torch.Tensor, lmbda: float) -> tuple["GaussianMixture", float]:
        """The mixture proportional to p(x) exp(lmbda a.x), and log Z = log E_p[exp(lmbda a.x)].

        Raises:
            TypeError: if `lmbda` is not a number.
            ValueError: if `lmbda` is NaN or infinite, or `direction` not a finite vector of the mixture's dimension.
        """
        lmbda = check_number("lmbda", lmbda, hint="The tilt p(x) exp(lmbda a.x) needs a finite lmbda.")
        a = _direction(direction, self.dim)
        shift = self.covariances @ a  # Sigma_k a, (K, d)
        log_factors = lmbda * self.means @ a + 0.5 * lmbda**2 * (shift @ a)
        log_joint = torch.log(self.weights) + log_factors
        log_normalizer = torch.logsumexp(log_joint, dim=0)
        tilted = GaussianMixture(torch.exp(log_joint - log_normalizer), self.means + lmbda * shift, self.covariances)
        return tilted, float(log_normalizer)


def four_modes() -> GaussianMixture:
    """The demo world: four modes of std 0.5 at (+-2, +-2) in 2-D, weights 0.4, 0.3, 0.2, 0.1 (the CLI's, the
    README's and the exactness tests')."""
    return GaussianMixture.isotropic([0.4, 0.3, 0.2, 0.1], [[-2, -2], [2, -2], [-2, 2], [2, 2]], std=0.5)


def linear_reward(direction: torch.Tensor | list[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """r(x) = a . x for a batch of shape (N, d)."""
    a = _direction(direction, None)

    def reward(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64).reshape(x.shape[0], -1) @ a.to(x.device)

    return reward


def _direction(direction: torch.Tensor | list[float], dim: int | None) -> torch.Tensor:
    """`direction` as a finite float64 vector (of length `dim`, when given)."""
    try:
        a = torch.as_tensor(direction, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"direction must be a vector of numbers, got {direction!r}.") from None
    if a.ndim != 1 or (dim is not None and a.shape[0] != dim) or not torch.isfinite(a).all():
        size = "d" if dim is None else str(dim)
        raise ValueError(f"direction must be a finite vector of shape ({size},), got {a.tolist()}.")
    return a


def exact_denoiser(
    mixture: GaussianMixture, scheduler: SchedulerMixin
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact model for `scheduler`: `model(sample, timestep) -> output` in the scheduler's parameterisation.

    VP schedulers get epsilon, v or the sample as their `prediction_type` says (with alpha_bar read off the
    scheduler's `alphas_cumprod`, interpolated at fractional timesteps); flow-matching schedulers get the velocity
    eps - x0 of x_t = (1 - sigma) x0 + sigma eps.
    """
    flow = scheduler_spec(scheduler).space == "flow" or scheduler.config.get("prediction_type") == "flow_prediction"
    prediction_type = None if flow else scheduler.config.prediction_type

    def model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if flow:
            sigma = flow_sigma(scheduler, timestep)
            scale, noise_std = 1.0 - sigma, sigma
        else:
            a = alpha_bar(scheduler, timestep)
            scale, noise_std = math.sqrt(a), math.sqrt(1.0 - a)
        x = sample.to(torch.float64).reshape(sample.shape[0], -1)
        x0 = mixture.posterior_mean(x, scale, noise_std)
        eps = (x - scale * x0) / noise_std
        if flow:
            output = eps - x0
        elif prediction_type == "epsilon":
            output = eps
        elif prediction_type == "v_prediction":
            output = scale * eps - noise_std * x0
        elif prediction_type == "sample":
            output = x0
        else:
            raise ValueError(f"Unsupported prediction_type {prediction_type!r}.")
        return output.reshape(sample.shape).to(sample.dtype)

    return model
