"""Round two of hostile inputs, the schedules' side (issue 20, classes 2 and 8): every noise schedule is checked as a
whole (finite, strictly ordered in float32, no repeated timestep), recipes run on the MODEL's own training steps
and refuse what they cannot honour, and ``dpm_solver_schedule`` gives the reference pipeline's integer timesteps
and sigmas, equal to diffusers' DPMSolverMultistepScheduler for 1..50 steps."""

from __future__ import annotations

import json

import pytest
import torch
from hostile import check_refusal

from pixart import CheckpointError, pipeline_noise_schedule
from pixart.errors import PixArtError, ScheduleError
from pixart.sampling import (
    NoiseSchedule,
    dpm_solver_schedule,
    max_spaced_steps,
    model_recipe,
    spaced_timesteps,
)

diffusers = pytest.importorskip("diffusers")

MAX_MESSAGE = 600


def _bounded(error: BaseException, *named: str) -> str:
    """A refusal of ours, short, cp1252, naming each of ``named``."""
    assert isinstance(error, PixArtError), repr(error)
    message = str(error)
    assert len(message) <= MAX_MESSAGE and all(n in message for n in named), message
    message.encode("cp1252")
    return message


def _pipeline(tmp_path, **scheduler) -> tuple:
    root = tmp_path / "pipe"
    (root / "transformer").mkdir(parents=True)
    (root / "transformer" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    (root / "scheduler").mkdir()
    config = root / "scheduler" / "scheduler_config.json"
    config.write_text(
        json.dumps({"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "linear", **scheduler})
    )
    return root, config


# ---- class 2: the schedule as a whole ----------------------------------------------------------------------------

BAD_BETAS = {
    "overflows-in-float32": ({"beta_start": 0.1, "beta_end": 0.3}, "overflows"),  # sigma(999) ~ 1e43: finite in fp64
    "underflows-to-inf": ({"beta_start": 0.5, "beta_end": 0.9}, "overflows"),
    "all-zero": ({"beta_start": 1e-20, "beta_end": 2e-20}, "zero"),
}


@pytest.mark.parametrize("case", list(BAD_BETAS))
def test_a_scheduler_config_whose_schedule_cannot_be_sampled_is_refused(tmp_path, case):
    betas, said = BAD_BETAS[case]
    root, config = _pipeline(tmp_path, **betas)
    message = check_refusal(pytest.raises(CheckpointError, pipeline_noise_schedule, root).value, config)
    assert said in message and "float32" in message


def test_the_shipped_schedules_pass_and_their_sigmas_stay_diffusers():
    for zsnr in (False, True):
        schedule = NoiseSchedule(zero_terminal_snr=zsnr)
        reference = diffusers.DPMSolverMultistepScheduler(
            beta_start=0.0001, beta_end=0.02, beta_schedule="linear", rescale_betas_zero_snr=zsnr
        )
        assert torch.allclose(schedule.sigmas().float(), reference.sigmas, rtol=2e-4)  # theirs: float32


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize(("train_steps", "offset"), [(1000, 0), (1000, 1), (7, 0), (12, 1)])
def test_spacing_never_repeats_a_timestep_near_the_top_of_the_range(spacing, train_steps, offset):
    limit = max_spaced_steps(spacing, train_steps, offset)
    for steps in [*range(1, min(limit, 30) + 1), *range(max(limit - 30, 1), limit + 1)]:
        try:
            timesteps = spaced_timesteps(steps, spacing, train_steps, offset)
        except ScheduleError as e:  # leading + offset: a few step counts below the limit overshoot T-1
            assert spacing == "leading" and offset and "outside" in str(e), e
            continue
        assert len(set(timesteps)) == steps and min(timesteps) >= 0 and max(timesteps) < train_steps
    for steps in (limit + 1, limit + 7, 10_000):
        error = pytest.raises(ScheduleError, spaced_timesteps, steps, spacing, train_steps, offset).value
        _bounded(error, spacing, f"{steps} steps", f"at most {limit}")
    if spacing == "linspace":  # diffusers repeats a timestep one step past the limit (a zero-length step)
        reference = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=train_steps, timestep_spacing=spacing)
        reference.set_timesteps(limit + 1)
        assert len(set(reference.timesteps.tolist())) < limit + 1


# ---- class 2: recipes on the MODEL's own training steps ----------------------------------------------------------


@pytest.mark.parametrize("train_steps", [1000, 500, 800])
def test_recipes_use_the_models_own_training_steps(train_steps):
    schedule = NoiseSchedule(train_steps=train_steps)
    lcm = diffusers.LCMScheduler(num_train_timesteps=train_steps, beta_start=0.0001, beta_end=0.02)
    lcm.set_timesteps(4)
    assert model_recipe("lcm", schedule).timesteps() == lcm.timesteps.tolist()
    dpm = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=train_steps, beta_start=0.0001, beta_end=0.02)
    dpm.set_timesteps(20)
    assert model_recipe("sigma-reference", schedule, steps=20).timesteps() == dpm.timesteps.tolist()
    assert max(model_recipe("sigma-reference", schedule, steps=20).timesteps()) == train_steps - 1


REFUSED = {
    "one-step-timestep-past-the-model": (("alpha-dmd-512", NoiseSchedule(train_steps=300)), {}, "timestep 400"),
    "asked-timestep-past-the-model": (("nitro-1", NoiseSchedule()), {"timestep": 1000}, "0..999"),
    "too-many-steps": (("sigma-reference", NoiseSchedule()), {"steps": 1000}, "at most 999"),
    "lcm-past-its-original-steps": (("lcm", NoiseSchedule()), {"steps": 51}, "1..50"),
    "lcm-on-too-few-training-steps": (("lcm", NoiseSchedule(train_steps=40)), {}, "at least 50"),
    "prediction-differs": (("yoso", NoiseSchedule()), {}, "prediction"),
    "zero-snr-differs": (("sigma-900m-v", NoiseSchedule(prediction="v_prediction")), {}, "zero_terminal_snr"),
    "zero-snr-step-raises-the-noise": (
        ("sigma-900m-v", NoiseSchedule(prediction="v_prediction", zero_terminal_snr=True)),
        {"steps": 400},
        "does not lower the noise",
    ),
    "unknown-recipe": (("dmd-2", NoiseSchedule()), {}, "not one of"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_recipes_refuse_what_they_cannot_honour(case):
    (name, schedule), settings, said = REFUSED[case]
    error = pytest.raises(ScheduleError, model_recipe, name, schedule, **settings).value
    _bounded(error, repr(name), said)


# ---- class 8: the reference pipeline's own timesteps -------------------------------------------------------------


@pytest.mark.parametrize("steps", range(1, 51))
def test_dpm_solver_schedule_equals_the_reference_scheduler(steps):
    """PixArtSigmaPipeline's scheduler config: DPMSolverMultistepScheduler, linear betas 1e-4..0.02, linspace."""
    reference = diffusers.DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", timestep_spacing="linspace"
    )
    reference.set_timesteps(steps)
    timesteps, sigmas = dpm_solver_schedule(steps)
    assert timesteps == reference.timesteps.tolist()
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0
    assert torch.allclose(sigmas.float(), reference.sigmas.float(), rtol=1e-5, atol=0)
    assert timesteps[0] == 999 and all(isinstance(t, int) for t in timesteps)
