"""Reward models as potentials (installed as `diffsteer.rewards`).

The reward-model registry (ImageReward, CLIP, HPSv2, PickScore, aesthetic, compressibility) arrives with the rewards
work; until then a reward is any callable that scores a batch, as `diffsteer.sample` documents.
"""
