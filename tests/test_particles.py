from typing import NamedTuple

import pytest
import torch

from diffsteer.smc import Particles


class Pair(NamedTuple):
    first: torch.Tensor
    second: torch.Tensor


class History:
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def reindex(self, indices: torch.Tensor) -> None:
        self.rows = self.rows[indices]


def test_reindex_moves_every_field_together():
    n = 4
    history = History(torch.arange(n) * 10)
    particles = Particles(
        n,
        latents=torch.arange(n * 2).reshape(n, 2),
        outputs=[torch.arange(n), None, torch.arange(n) + 100],
        pair=Pair(torch.arange(n), torch.arange(n) * -1),
        history=history,
        counter=3,
        nothing=None,
    )
    indices = torch.tensor([3, 3, 0, 1])
    particles.reindex(indices)
    assert particles.latents[:, 0].tolist() == [6, 6, 0, 2]
    assert particles.outputs[0].tolist() == [3, 3, 0, 1]
    assert particles.outputs[1] is None
    assert particles.outputs[2].tolist() == [103, 103, 100, 101]
    assert particles.pair.second.tolist() == [-3, -3, 0, -1]
    assert isinstance(particles.pair, Pair)
    assert history.rows.tolist() == [30, 30, 0, 10]
    assert particles.counter == 3 and particles.nothing is None


def test_fields_must_carry_the_particle_dimension():
    particles = Particles(3)
    with pytest.raises(ValueError, match="first dimension"):
        particles.latents = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="first dimension"):
        particles.history = [torch.zeros(3), torch.zeros(2)]
    with pytest.raises(ValueError, match="num_particles"):
        Particles(0)
    with pytest.raises(AttributeError, match="no field 'missing'"):
        _ = particles.missing


def test_reindex_keeps_the_particle_count():
    particles = Particles(3, latents=torch.zeros(3))
    with pytest.raises(ValueError, match="indices must have shape"):
        particles.reindex(torch.tensor([0, 1]))
