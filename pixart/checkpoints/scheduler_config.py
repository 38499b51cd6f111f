"""The noise schedule a diffusers pipeline folder states in ``scheduler/scheduler_config.json``.

PixArt checkpoints train on linear betas 1e-4..0.02 over 1000 steps with epsilon prediction; some (the
PixArt-Sigma-900M revisions) state ``prediction_type: v_prediction`` and ``rescale_betas_zero_snr: true``, or their
own betas, there. diffusers writes every field; the betas must be stated (their defaults differ between scheduler
classes), while a missing prediction_type, rescale_betas_zero_snr or num_train_timesteps takes the default every
class shares (epsilon, false, 1000). Settings that only choose how a sampler walks the schedule (``timestep_spacing``,
``solver_order``, ...) are not part of the schedule and are not read.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, short
from ..io import entry_kind, json_field, read_json
from ..sampling.schedules import PREDICTIONS, NoiseSchedule

SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
BETA_SCHEDULES = ("linear",)  # the only one NoiseSchedule reproduces (and the only one PixArt trained on)
MAX_TRAIN_STEPS = 100_000  # num_train_timesteps a config may state (PixArt: 1000)


def _choice(config: dict, key: str, default: str | None, allowed: tuple[str, ...], source: str, why: str) -> str:
    """``config[key]``, a string in ``allowed``; required when ``default`` is None."""
    value = json_field(config, key, str, source, CheckpointError, *(() if default is None else (default,)))
    if value not in allowed:
        raise CheckpointError(f"{source}: {key} is {short(repr(value), 60)}, expected one of {allowed}; {why}")
    return value


def read_noise_schedule(path: Path) -> NoiseSchedule:
    """The training noise schedule of a diffusers ``scheduler_config.json``: prediction type, zero terminal SNR,
    linear betas and training steps. CheckpointError naming the file for anything ``NoiseSchedule`` cannot
    reproduce (another beta schedule, explicit betas, sample prediction, flow matching) or a value of the wrong type."""
    config = read_json(path, CheckpointError, constants=True)  # diffusers writes lambda_min_clipped: -Infinity
    source = str(path)
    name = json_field(config, "_class_name", str, source, CheckpointError, "")
    flow = "FlowMatch" in name or json_field(config, "use_flow_sigmas", bool, source, CheckpointError, False)
    if flow:
        raise CheckpointError(
            f"{source}: a flow-matching scheduler ({short(name, 60) or 'use_flow_sigmas'}), expected a discrete "
            "DDPM-family one (DPMSolverMultistepScheduler, DDIMScheduler, ...); PixArt models sample on betas"
        )
    if json_field(config, "trained_betas", list, source, CheckpointError, None) is not None:
        raise CheckpointError(
            f"{source}: states explicit trained_betas, expected null; only linear beta schedules are reproduced"
        )
    _choice(config, "beta_schedule", None, BETA_SCHEDULES, source, "only linear betas are reproduced")
    why = "PixArt models predict noise or velocity; sample (x_0) prediction is not supported"
    prediction = _choice(config, "prediction_type", "epsilon", PREDICTIONS, source, why)
    fields = {
        "prediction": prediction,
        "zero_terminal_snr": json_field(config, "rescale_betas_zero_snr", bool, source, CheckpointError, False),
        "beta_start": json_field(config, "beta_start", float, source, CheckpointError, limits=(0.0, 1.0)),
        "beta_end": json_field(config, "beta_end", float, source, CheckpointError, limits=(0.0, 1.0)),
        "train_steps": json_field(
            config, "num_train_timesteps", int, source, CheckpointError, NoiseSchedule.train_steps, (2, MAX_TRAIN_STEPS)
        ),
    }
    try:
        return NoiseSchedule(**fields)
    except ValueError as e:  # beta_start >= beta_end, or a bound of 0 or 1
        raise CheckpointError(f"{source}: {e}") from e


def pipeline_noise_schedule(path: str | Path) -> NoiseSchedule | None:
    """The noise schedule of a diffusers pipeline folder (``transformer/`` beside ``scheduler/scheduler_config.json``);
    None for a single file, a transformer folder alone, or a pipeline folder without a scheduler config. A scheduler
    config that is there but is not a regular file (a folder, a FIFO, a dangling link) is a CheckpointError naming
    it: taking it as absent would sample a v-prediction or zero-SNR model as epsilon."""
    path = Path(path)
    if not (path / "transformer" / "config.json").is_file() or entry_kind(path / SCHEDULER_CONFIG) == "missing":
        return None
    return read_noise_schedule(path / SCHEDULER_CONFIG)
