"""One budget for every method: `make_method(name, budget=B, num_inference_steps=T)`.

A budget B is B plain samples' denoiser cost at the same steps and guidance: one plain sample makes the model calls
of a plain run (T, or 2T - 1 for an order-2 solver), so a method may spend B times those calls per prompt, counting
every particle's calls. Each method turns B into its counts as its entry in `BUDGET_RULES` says, and is refused with
the smallest budget it needs when B is below it. The same names and defaults serve the Python API and the CLI.
"""

import math
from collections.abc import Callable
from typing import Any

from diffsteer.methods.branching import RBF, SVDD
from diffsteer.methods.fk import FK, BestOfN
from diffsteer.methods.guidance import Guidance, Twisted
from diffsteer.methods.noise_opt import NoiseOpt
from diffsteer.methods.search import Paths, ZeroOrder
from diffsteer.smc.checks import check_choice, check_int, check_number


METHOD_CLASSES: dict[str, type] = {
    "bon": BestOfN,
    "fk": FK,
    "zero-order": ZeroOrder,
    "paths": Paths,
    "svdd": SVDD,
    "rbf": RBF,
    "guidance": Guidance,
    "twisted": Twisted,
    "noise-opt": NoiseOpt,
}
METHOD_NAMES = tuple(METHOD_CLASSES)
# Each method's defaults beyond its class's own (FK's were chosen on training prompts of the shapes world).
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "bon": {},
    "fk": {"potential": "diff", "lmbda": 1.0, "interval": 5, "resampling": "systematic"},
    "zero-order": {},
    "paths": {},
    "svdd": {},
    "rbf": {},
    "guidance": {},
    "twisted": {},
    "noise-opt": {},
}
# How each method turns a budget into its counts, as the README and `diffsteer methods` say it.
BUDGET_RULES: dict[str, str] = {
    "bon": "num_particles = floor(B)",
    "fk": "num_particles = floor(B)",
    "zero-order": "num_rounds = floor((B - 1) / num_neighbors): 1 + num_neighbors * num_rounds trajectories",
    "paths": "num_branches = the most that fit (num_paths = 2, or 1 if 2 paths of 2 branches do not fit)",
    "svdd": "num_children = floor((B T / num_chains - 1) / (T - 1)): one call at x_T, then one per child and step",
    "rbf": "quota = floor((B T / num_chains - init_particles) / (T - 1)), init_particles = quota by default",
    "guidance": "num_particles = floor(B / (1 + BACKWARD_COST)) for variant='dps' (a backward pass through the "
    "denoiser per step), floor(B) for 'x0-fixed'",
    "twisted": "num_particles = floor(B / (1 + BACKWARD_COST)) for variant='dps', floor(B) for 'x0-fixed'",
    "noise-opt": "num_iterations = floor((B / num_chains + c) / (1 + c)), c = BACKWARD_COST + 1 with checkpointing "
    "(BACKWARD_COST without): each gradient step adds a backward pass (and a recomputed forward)",
}
# The setting each rule computes: passing it too is refused (the budget decides it).
_COUNT_SETTING = {
    "guidance": "num_particles",
    "twisted": "num_particles",
    "noise-opt": "num_iterations",
    "bon": "num_particles",
    "fk": "num_particles",
    "zero-order": "num_rounds",
    "paths": None,
    "svdd": "num_children",
    "rbf": "quota",
}


def make_method(
    name: str,
    *,
    budget: float,
    num_inference_steps: int,
    num_model_calls: int | None = None,
    **settings: Any,
) -> Any:
    """The method called `name` that spends at most `budget` plain samples' denoiser calls per prompt.

    Args:
        name: one of `METHOD_NAMES` (`bon`, `fk`, `zero-order`, `paths`, `svdd`, `rbf`).
        budget: B, in plain samples (at least the method's minimum).
        num_inference_steps: the steps T of the plain sample (and of every trajectory).
        num_model_calls: the model calls of one plain sample (defaults to T; an order-2 solver makes 2T - 1).
        **settings: the method's other settings (its class's arguments), over `DEFAULT_SETTINGS[name]`.

    Raises:
        ValueError: for an unknown name, a budget below the method's minimum (naming it), or a setting the budget
            decides.
    """
    name = check_choice("name", name, METHOD_NAMES)
    budget = check_number("budget", budget, minimum=1.0, hint="It counts plain samples: 1 is one plain sample.")
    steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
    calls = check_int("num_model_calls", steps if num_model_calls is None else num_model_calls, minimum=steps)
    counted = _COUNT_SETTING[name]
    if counted is not None and counted in settings:
        raise ValueError(
            f"{counted} is what the budget decides for {name} ({BUDGET_RULES[name]}); drop it, or build "
            f"{METHOD_CLASSES[name].__name__}({counted}=...) without a budget."
        )
    settings = {**DEFAULT_SETTINGS[name], **settings}
    method = _PLANNERS[name](budget, steps, calls, settings)
    spent = method.model_passes(steps, calls)
    if spent > budget * calls + 1e-9:  # a planner's guarantee, checked
        raise AssertionError(f"{name} would spend {spent} calls over a budget of {budget * calls}.")
    return method


def _plan_particles(cls: type) -> Callable[[float, int, int, dict[str, Any]], Any]:
    def plan(budget: float, steps: int, calls: int, settings: dict[str, Any]) -> Any:
        return cls(math.floor(budget), **settings, budget=budget)

    return plan


def _plan_gradient(cls: type) -> Callable[[float, int, int, dict[str, Any]], Any]:
    def plan(budget: float, steps: int, calls: int, settings: dict[str, Any]) -> Any:
        from diffsteer.gradients import BACKWARD_COST

        dps = settings.get("variant", "dps") == "dps"
        per_particle = 1 + BACKWARD_COST if dps else 1.0
        particles = math.floor(budget / per_particle + 1e-9)
        if particles < 1:
            raise ValueError(
                f"budget {budget:g} is too small for {cls.__name__} with variant='dps': one particle costs "
                f"{per_particle:g} plain samples (a forward and a backward pass through the denoiser, "
                f"BACKWARD_COST = {BACKWARD_COST:g}, at every step). Raise the budget to "
                f"{math.ceil(per_particle)}, or pass variant='x0-fixed' (no backward pass through the denoiser)."
            )
        return cls(particles, **settings, budget=budget)

    return plan


def _plan_noise_opt(budget: float, steps: int, calls: int, settings: dict[str, Any]) -> NoiseOpt:
    probe = NoiseOpt(**settings)
    extra = NoiseOpt.iteration_cost(probe.checkpointing)
    iterations = math.floor((budget / probe.num_chains + extra) / (1 + extra) + 1e-9)
    if iterations < 2:
        need = probe.num_chains * (2 + extra)
        raise ValueError(
            f"budget {budget:g} is too small for noise optimisation with num_chains={probe.num_chains}: one gradient "
            f"step needs two passes through the sampler and a backward pass ({need:.3g} plain samples"
            f"{' with checkpointing' if probe.checkpointing else ''}). Raise the budget to {math.ceil(need)}."
        )
    return NoiseOpt(num_iterations=iterations, **settings, budget=budget)


def _plan_zero_order(budget: float, steps: int, calls: int, settings: dict[str, Any]) -> ZeroOrder:
    neighbours = ZeroOrder(**settings).num_neighbors
    rounds = math.floor((budget - 1) / neighbours)
    if rounds < 1:
        raise ValueError(
            f"budget {budget:g} is too small for zero-order search with num_neighbors={neighbours}: one round runs "
            f"the pivot and its neighbours, {1 + neighbours} plain samples. Raise the budget to {1 + neighbours}, or "
            "lower num_neighbors."
        )
    return ZeroOrder(num_rounds=rounds, **settings, budget=budget)


def _plan_paths(budget: float, steps: int, calls: int, settings: dict[str, Any]) -> Paths:
    allowed = budget * calls
    if "num_paths" in settings and "num_branches" in settings:
        choices = [(settings["num_paths"], settings["num_branches"])]
    elif "num_paths" in settings:
        choices = [(settings["num_paths"], None)]
    elif "num_branches" in settings:
        choices = [(2, settings["num_branches"]), (1, settings["num_branches"])]
    else:
        choices = [(2, None), (1, None)]
    others = {key: value for key, value in settings.items() if key not in ("num_paths", "num_branches")}
    if not Paths(**others).hops(steps)[1]:
        # The search would start at the end of the schedule (start * T rounds to 0): no hop, so no branches to buy.
        choices = [(paths, branches or 2) for paths, branches in choices]
    for paths, branches in choices:
        if branches is None:
            branches = _most(lambda m, n=paths: Paths(n, m, **others).model_passes(steps, calls) <= allowed, 2)
            if branches is None:
                continue
        method = Paths(paths, branches, **others, budget=budget)
        if method.model_passes(steps, calls) <= allowed:
            return method
    paths, branches = choices[-1]
    smallest = Paths(paths, branches or 2, **others)
    needed = smallest.model_passes(steps, calls) / calls
    raise ValueError(
        f"budget {budget:g} is too small for search over paths with {smallest.num_paths} path(s) of "
        f"{smallest.num_branches} branches on {steps} steps: it needs {needed:.4g} plain samples (each hop denoises "
        f"{smallest.backward:g} of the schedule again per branch). Raise the budget to {math.ceil(needed)}."
    )


def _plan_svdd(budget: float, steps: int, calls: int, settings: dict[str, Any]) -> SVDD:
    chains = SVDD(**settings).num_chains
    per_chain = budget * calls / chains
    children = math.floor(budget / chains) if steps == 1 else math.floor((per_chain - 1) / (steps - 1))
    if children < 1:
        raise ValueError(
            f"budget {budget:g} is too small for SVDD with num_chains={chains}: one child per chain and step costs "
            f"{chains} plain samples. Raise the budget to {chains}, or lower num_chains."
        )
    return SVDD(num_children=children, **settings, budget=budget)


def _plan_rbf(budget: float, steps: int, calls: int, settings: dict[str, Any]) -> RBF:
    chains = RBF(**settings).num_chains
    per_chain = budget * calls / chains
    init = settings.get("init_particles")
    if init is None:
        quota = math.floor(per_chain / steps)  # init_particles = quota: quota * T calls per chain
    elif steps == 1:
        quota = 1 if init <= per_chain else 0
    else:
        quota = math.floor((per_chain - init) / (steps - 1))
    if quota < 1:
        need = chains * ((init or 1) + (steps - 1)) / calls
        raise ValueError(
            f"budget {budget:g} is too small for rollover budget forcing with num_chains={chains}: one try per chain "
            f"and step needs {need:.4g} plain samples. Raise the budget to {math.ceil(need)}."
        )
    return RBF(quota=quota, **settings, budget=budget)


def _most(fits: Callable[[int], bool], low: int, limit: int = 2**20) -> int | None:
    """The largest integer in [low, limit] for which `fits` holds (it holds for all smaller ones), or None."""
    if not fits(low):
        return None
    high = low
    while high * 2 <= limit and fits(high * 2):
        high *= 2
    lo, hi = high, high * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


_PLANNERS: dict[str, Callable[[float, int, int, dict[str, Any]], Any]] = {
    "bon": _plan_particles(BestOfN),
    "fk": _plan_particles(FK),
    "guidance": _plan_gradient(Guidance),
    "twisted": _plan_gradient(Twisted),
    "noise-opt": _plan_noise_opt,
    "zero-order": _plan_zero_order,
    "paths": _plan_paths,
    "svdd": _plan_svdd,
    "rbf": _plan_rbf,
}
