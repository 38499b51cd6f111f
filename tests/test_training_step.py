"""One training step equals the reference: the loss of diffusers' PixArtTransformer2DModel (epsilon / v MSE, the
learned-sigma VB term), PEFT's LoRA after one clipped AdamW step, and diffusers' model after a full fine-tune step."""

import copy

import pytest
import torch
from training_fixtures import batch, pair, reference_loss, rel

from pixart.checkpoints.keymap import diffusers_to_official
from pixart.sampling import NoiseSchedule
from pixart.training import ATTENTION_MODULES, Trainer, diffusion_loss, preset, target_modules

pytest.importorskip("diffusers")

TOL = 1e-5
# Adam's first step is about lr * sign(gradient): elements whose clipped gradient is near eps (1e-8) turn
# rounding-level gradient differences into update differences of up to ~1e-3 lr. Gradients are compared directly;
# weights after the step at the presets' own learning rates. The step batches avoid t = 0: there the decoder NLL's
# gradient scales rounding by exp(-log variance / 2) (up to ~1e10), in the reference as much as here.
STEP_TIMESTEPS = (3, 1, 500, 999)


@pytest.mark.parametrize("vb", [False, True], ids=["mse", "mse+vb"])
@pytest.mark.parametrize("timesteps", [(0, 1, 500, 999), (7, 250, 998, 2)], ids=["edges", "mixed"])
def test_loss_equals_reference(vb, timesteps):
    config, reference, ours = pair()
    latents, caption, mask, noise, t = batch(config, timesteps=timesteps)
    with torch.no_grad():
        got = diffusion_loss(ours, latents, caption, mask, noise, t, NoiseSchedule(), vb=vb)
        expected = reference_loss(reference, latents, caption, mask, noise, t, vb)
    assert got.vb.item() > 0 if vb else got.vb.item() == 0
    assert abs(got.total.item() / expected.item() - 1) <= TOL
    assert abs(got.mse.item() + got.vb.item() - got.total.item()) <= 1e-6 * got.total.item()


def test_v_prediction_target_equals_reference():
    config, reference, ours = pair()
    latents, caption, mask, noise, t = batch(config, timesteps=(3, 400, 800, 999))
    with torch.no_grad():
        got = diffusion_loss(ours, latents, caption, mask, noise, t, NoiseSchedule(prediction="v_prediction"))
        expected = reference_loss(reference, latents, caption, mask, noise, t, False, "v_prediction")
        epsilon = diffusion_loss(ours, latents, caption, mask, noise, t, NoiseSchedule())
    assert abs(got.total.item() / expected.item() - 1) <= TOL
    assert abs(epsilon.total.item() / got.total.item() - 1) > 1e-3  # the target really changed


def test_timesteps_outside_the_schedule_are_refused():
    config, _, ours = pair()
    latents, caption, mask, noise, _ = batch(config)
    with pytest.raises(ValueError, match=r"timesteps must lie in 0\.\.999"):
        diffusion_loss(ours, latents, caption, mask, noise, torch.tensor([0, 1, 2, 1000]), NoiseSchedule())
    with pytest.raises(ValueError, match="integers"):
        diffusion_loss(ours, latents, caption, mask, noise, torch.tensor([0.5, 1, 2, 3]), NoiseSchedule())


def _peft_model(reference, settings, names):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, target_modules=names)
    return get_peft_model(copy.deepcopy(reference), config)


def _randomise_lora(trainer, peft_model, seed=11):
    """The same non-zero A and B in both (B starts at zero in both, which would leave A without a gradient)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, down, up in trainer.lora.pairs():
            for ours, role in ((down, "lora_A"), (up, "lora_B")):
                ours.copy_(torch.randn(ours.shape, generator=g) * 0.05)
                params[f"base_model.model.{name}.{role}.default.weight"].copy_(ours)


def _reference_step(model, params, settings, latents, caption, mask, noise, t):
    optimizer = torch.optim.AdamW(
        params,
        lr=settings.learning_rate,
        betas=(settings.beta1, settings.beta2),
        eps=settings.eps,
        weight_decay=settings.weight_decay,
    )
    loss = reference_loss(model, latents, caption, mask, noise, t, settings.vb_loss)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    optimizer.step()
    return loss


@pytest.mark.parametrize("targets", ["attention", "all_linear"])
def test_lora_step_equals_peft(targets):
    config, reference, ours = pair()
    settings = preset("pixart_sigma_512_lora", precision="fp32", lora_targets=targets, lora_rank=4)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    trainer = Trainer(ours, settings)
    names = [name for name, _ in target_modules(ours, targets)]
    if targets == "attention":
        assert len(names) == 8 * config.depth and all(n.endswith(ATTENTION_MODULES) for n in names)
    peft_model = _peft_model(reference, settings, names if targets == "all_linear" else list(ATTENTION_MODULES))
    _randomise_lora(trainer, peft_model)
    peft_params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert len(peft_params) == 2 * len(names) == sum(p.numel() > 0 for p in trainer.parameters)
    before = {n: p.detach().clone() for n, p in peft_params.items()}
    latents, caption, mask, noise, t = batch(config, timesteps=STEP_TIMESTEPS)
    got = trainer.step(latents, caption, mask, noise, t)
    expected = _reference_step(peft_model, list(peft_params.values()), settings, latents, caption, mask, noise, t)
    assert abs(got.total.item() / expected.item() - 1) <= TOL
    for name, down, up in trainer.lora.pairs():
        for ours_p, role in ((down, "lora_A"), (up, "lora_B")):
            key = f"base_model.model.{name}.{role}.default.weight"
            assert rel(ours_p.grad, peft_params[key].grad) <= TOL, key  # clipped gradients
            assert rel(ours_p.detach(), peft_params[key].detach()) <= TOL, key
            moved = (peft_params[key].detach() - before[key]).abs().max().item()
            assert moved >= 0.5 * settings.learning_rate, key  # the step moved it
    assert all(not p.requires_grad for p in ours.parameters())
    assert all(torch.equal(v, base[k]) for k, v in ours.state_dict().items())  # LoRA leaves the model's weights


def test_full_step_equals_diffusers():
    config, reference, ours = pair()
    settings = preset("pixart_sigma_512_pokemon", precision="fp32")
    trainer = Trainer(ours, settings)
    latents, caption, mask, noise, t = batch(config, timesteps=STEP_TIMESTEPS)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    got = trainer.step(latents, caption, mask, noise, t)
    expected = _reference_step(reference, list(reference.parameters()), settings, latents, caption, mask, noise, t)
    assert abs(got.total.item() / expected.item() - 1) <= TOL
    after, unknown = diffusers_to_official(reference.state_dict())
    grads, _ = diffusers_to_official({n: p.grad for n, p in reference.named_parameters()})
    assert not unknown and set(after) == set(ours.state_dict()) == set(grads)
    for key, value in ours.named_parameters():
        assert rel(value.grad, grads[key]) <= TOL, key  # clipped gradients
        assert rel(value.detach(), after[key]) <= TOL, key
        assert (value.detach() - before[key]).abs().max().item() >= 0.5 * settings.learning_rate, key
