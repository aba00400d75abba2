"""Drop-in diffusers steering pipelines (installed as `diffsteer.pipelines`).

The Stable Diffusion, SDXL, SD3 and Flux steering pipelines arrive with the pipelines work; until then this
subpackage is empty, and `diffsteer.sample` is the entry point.
"""
