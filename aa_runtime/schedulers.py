"""Scheduler choice by name; schedulers stay outside the model (epsilon prediction, CFG in the pipeline)."""
from __future__ import annotations

from typing import Literal

from .errors import AAError

SchedulerName = Literal["ddim", "dpm++", "euler"]
SCHEDULERS: tuple[str, ...] = ("ddim", "dpm++", "euler")


def make_scheduler(name: str, config: dict):
    """A fresh scheduler of kind `name` built from the base's scheduler config."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    common = {k: v for k, v in config.items() if not k.startswith("_")}
    if name == "ddim":
        return DDIMScheduler.from_config(common)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(common, algorithm_type="dpmsolver++", solver_order=2)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(common)
    raise AAError("scheduler", repr(name), f"use one of {', '.join(SCHEDULERS)}")
