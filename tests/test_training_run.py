"""A training run learns, repeats itself with the same seed, and its options (checkpointing, bf16, warm-up, settings
checks) do what they say."""

import math

import pytest
import torch
from training_fixtures import batch, pair, rel

from pixart.sampling import NoiseSchedule
from pixart.training import LoraAdapter, Trainer, TrainingError, TrainSettings, preset, warmup_factor

PROBE_TIMESTEPS = (50, 300, 600, 900)


@pytest.mark.parametrize(
    "name,changes",
    [
        ("pixart_sigma_512_lora", {"learning_rate": 3e-3, "lora_rank": 4}),
        ("pixart_sigma_512_pokemon", {"learning_rate": 1e-3}),
    ],
    ids=["lora", "full"],
)
def test_thirty_steps_lower_the_probe_loss(name, changes):
    config, _, model = pair()
    trainer = Trainer(model, preset(name, precision="fp32", **changes))
    latents, caption, mask, noise, t = batch(config, timesteps=PROBE_TIMESTEPS)
    start = trainer.evaluate(latents, caption, mask, noise, t)
    for _ in range(30):
        terms = trainer.step(latents, caption, mask)
        assert math.isfinite(terms.total.item())
    end = trainer.evaluate(latents, caption, mask, noise, t)
    assert end.total.item() < 0.8 * start.total.item()
    assert end.vb.item() > 0 and start.vb.item() > 0  # the VB term is part of what was trained


def _run(seed: int, steps: int = 5):
    config, _, model = pair()
    trainer = Trainer(model, preset("pixart_sigma_512_lora", precision="fp32", lora_rank=4, seed=seed))
    latents, caption, mask, _, _ = batch(config)
    losses = [trainer.step(latents, caption, mask).total.item() for _ in range(steps)]
    return losses, [p.detach().clone() for p in trainer.lora.parameters()]


def test_same_seed_repeats_the_run():
    losses_a, weights_a = _run(seed=7)
    losses_b, weights_b = _run(seed=7)
    losses_c, weights_c = _run(seed=8)
    assert losses_a == losses_b
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b, strict=True))
    assert losses_a != losses_c
    assert not all(torch.equal(a, c) for a, c in zip(weights_a, weights_c, strict=True))


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_step(mode):
    results = []
    for checkpointing in (False, True):
        config, _, model = pair()
        name = "pixart_sigma_512_lora" if mode == "lora" else "pixart_sigma_512_pokemon"
        settings = preset(name, precision="fp32", gradient_checkpointing=checkpointing, lora_rank=4)
        trainer = Trainer(model, settings)
        assert trainer.hooks == ((trainer.hooks[0],) if checkpointing else ())
        latents, caption, mask, noise, t = batch(config, timesteps=(3, 1, 500, 999))
        terms = trainer.step(latents, caption, mask, noise, t)
        results.append((terms.total.item(), [p.grad.clone() for p in trainer.parameters]))
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results
    assert abs(loss_plain - loss_ckpt) <= 1e-6 * abs(loss_plain)
    for plain, ckpt in zip(grads_plain, grads_ckpt, strict=True):
        if plain.abs().max() == 0:  # LoRA A while B is still zero
            assert ckpt.abs().max() == 0
        else:
            assert rel(ckpt, plain) <= 1e-5
    assert any(g.abs().max() > 0 for g in grads_plain)


def test_bf16_step_is_close_to_fp32_and_keeps_fp32_weights():
    losses = {}
    for precision in ("fp32", "bf16"):
        config, _, model = pair()
        trainer = Trainer(model, preset("pixart_sigma_512_pokemon", precision=precision, vb_loss=False))
        latents, caption, mask, noise, t = batch(config, timesteps=(3, 1, 500, 999))
        losses[precision] = trainer.step(latents, caption, mask, noise, t).total.item()
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert abs(losses["bf16"] / losses["fp32"] - 1) < 2e-2
    assert losses["bf16"] != losses["fp32"]  # autocast really ran in bf16


def test_warmup_is_linear_from_zero():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    config, _, model = pair()
    trainer = Trainer(model, preset("pixart_sigma_512_lora", precision="fp32", lora_rank=2, warmup_steps=2))
    latents, caption, mask, _, _ = batch(config)
    seen = []
    for _ in range(3):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.step(latents, caption, mask)
    assert seen == pytest.approx([0.0, 0.5e-4, 1e-4])


def test_attached_lora_starts_as_the_model_and_detaches():
    config, _, model = pair()
    latents, caption, mask, noise, t = batch(config)
    with torch.no_grad():
        before = model(latents, t, caption, mask)
        lora = LoraAdapter(model, rank=4, alpha=8, targets="all_linear", generator=torch.Generator().manual_seed(0))
        assert torch.equal(model(latents, t, caption, mask), before)  # B = 0
        for _, _, up in lora.pairs():
            up.normal_()
        changed = model(latents, t, caption, mask)
        lora.remove()
        assert torch.equal(model(latents, t, caption, mask), before)
    assert rel(changed, before) > 1e-2
    assert lora.scale == 2.0


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"lora_rank": 0}, "lora_rank"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"precision": "fp16"}, "precision"),
        ({"mode": "dora"}, "mode"),
        ({"lora_targets": "mlp"}, "lora_targets"),
        ({"warmup_steps": 1.5}, "warmup_steps"),
        ({"betas": (0.9, 0.99)}, "unknown training settings"),
    ],
)
def test_bad_settings_are_named(changes, match):
    with pytest.raises(TrainingError, match=match):
        TrainSettings().replace(**changes)


def test_presets_are_the_reference_configs():
    full, lora = preset("pixart_sigma_512_pokemon"), preset("pixart_sigma_512_lora")
    assert (full.mode, full.learning_rate, full.weight_decay, full.max_grad_norm) == ("full", 2e-6, 3e-2, 0.01)
    assert (full.batch_size, full.vb_loss, full.precision) == (4, True, "bf16")
    assert (lora.mode, lora.learning_rate, lora.lora_rank, lora.lora_alpha) == ("lora", 1e-4, 32, 32.0)
    assert lora.lora_targets == "attention"
    with pytest.raises(TrainingError, match="pixart_sigma_512_pokemon"):
        preset("pokemon")


def test_vb_needs_a_learned_variance_and_a_positive_alpha_bar():
    _, _, model = pair(out_channels=4)
    with pytest.raises(TrainingError, match="out_channels"):
        Trainer(model, preset("pixart_sigma_512_pokemon"))
    Trainer(model, preset("pixart_sigma_512_pokemon", vb_loss=False))
    _, _, model = pair()
    zero_snr = NoiseSchedule(prediction="v_prediction", zero_terminal_snr=True)
    with pytest.raises(TrainingError, match="zero terminal SNR"):
        Trainer(model, preset("pixart_sigma_512_pokemon"), zero_snr)


def test_non_finite_batch_is_refused():
    config, _, model = pair()
    trainer = Trainer(model, preset("pixart_sigma_512_lora", lora_rank=2))
    latents, caption, mask, _, _ = batch(config)
    latents[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError, match="latents"):
        trainer.step(latents, caption, mask)
