"""Scheduler choice by name; schedulers stay outside the model (epsilon prediction, CFG in the pipeline).

Few-step samplers for bundles or LoRAs trained for them: `lcm` (latent consistency models, Luo et al. 2023;
AnimateLCM), `tcd` (trajectory consistency distillation, Zheng et al. 2024) and `euler-trailing` (Euler with
trailing timesteps, which few-step distilled models such as AnimateDiff-Lightning expect: the first step starts at
the last training timestep). On an ordinary 25-step base they run, but blur."""
from __future__ import annotations

from typing import Literal

from .errors import AAError

SchedulerName = Literal["ddim", "dpm++", "euler", "euler-trailing", "lcm", "tcd"]
SCHEDULERS: tuple[str, ...] = ("ddim", "dpm++", "euler", "euler-trailing", "lcm", "tcd")
CONSISTENCY = ("lcm", "tcd")  # schedulers that re-noise between steps (seeded) and run at most ORIGINAL_STEPS
ORIGINAL_STEPS = 50  # the consistency schedulers' skipping schedule: at most this many steps


def make_scheduler(name: str, config: dict):
    """A fresh scheduler of kind `name` built from the base's scheduler config."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler,
                           TCDScheduler)

    common = {k: v for k, v in config.items() if not k.startswith("_")}
    if name == "ddim":
        return DDIMScheduler.from_config(common)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(common, algorithm_type="dpmsolver++", solver_order=2)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(common)
    if name == "euler-trailing":
        return EulerDiscreteScheduler.from_config(common, timestep_spacing="trailing")
    if name == "lcm":
        return LCMScheduler.from_config(common, original_inference_steps=ORIGINAL_STEPS)
    if name == "tcd":
        return TCDScheduler.from_config(common, original_inference_steps=ORIGINAL_STEPS)
    raise AAError("scheduler", repr(name), f"use one of {', '.join(SCHEDULERS)}")
