"""The training nodes in the session's ComfyUI (marker ``comfy``): PixArt Sigma Training Dataset on a tiny folder the
test writes (PIL images + captions), PixArt Sigma Train against ``pixart.training.Trainer`` driven directly, PixArt
Sigma Save Trained's LoRA through our loader and LoraLoaderModelOnly, Cancel between steps, and our errors for bad
inputs. Tiny random weights: a 2-block 144-wide DiT with 64-wide captions, a 64-wide T5, the tiny TAESD-layout VAE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dit_fixtures import tiny_config
from node_calls import add_model_folder, assert_close

from pixart import PixArtTransformer
from scripts import tiny_weights
from scripts.comfy_tree import REPO

pytestmark = pytest.mark.comfy
CAPTIONS = {"a.png": "a red square", "b.png": "a small blue circle on a green field", "c.png": "tall"}
SIZES = {"a.png": (256, 256), "b.png": (256, 256), "c.png": (176, 352)}  # (height, width): bins of base 256
TRAIN = {"preset": "pixart_sigma_512_lora", "mode": "lora", "steps": 3, "learning_rate": 1e-3, "lora_rank": 4,
         "lora_alpha": 8.0, "lora_targets": "attention", "batch_size": 2, "warmup_steps": 1, "grad_clip": 0.5,
         "weight_decay": 0.03, "precision": "fp32", "gradient_checkpointing": False, "seed": 5,
         "vb_loss": True}  # fmt: skip
SDXL_SCALE = 0.13025


class Tiny:
    """The tiny DiT as our MODEL, the T5 from PixArt Sigma T5 Loader (``t5``), the VAE, and the node modules."""

    def __init__(self, comfyui, work, monkeypatch, t5):
        import comfy.sd
        from safetensors.torch import save_file

        self.comfyui, self.work, self.t5 = comfyui, work, t5
        self.dit_path = work / "tiny_train.safetensors"
        torch.manual_seed(0)
        net = PixArtTransformer(tiny_config(num_heads=2, hidden_size=144, caption_channels=64))
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(self.dit_path))
        add_model_folder(monkeypatch, "loras", work / "loras")
        self.vae = comfy.sd.VAE(sd=tiny_weights.vae_state_dict(SDXL_SCALE))
        self.training = comfyui.module("nodes.training")
        self.dataset_module = comfyui.module("nodes.training.dataset")

    def model(self):
        return self.comfyui.module("nodes.dit.model").load_model(self.dit_path, "auto", torch.float32)

    def reference(self):
        import pixart

        return pixart.load_dit(self.dit_path, "auto", torch.float32)

    def folder(self, name="images", captions=CAPTIONS):
        from PIL import Image

        folder = self.work / name
        folder.mkdir()
        g = np.random.default_rng(1)
        for file, text in captions.items():
            h, w = SIZES.get(file, (256, 256))
            Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / file)
            (folder / file).with_suffix(".txt").write_text(text)
        return folder

    def dataset(self, folder, dropout=0.0):
        node = self.training.PixArtSigmaTrainingDataset
        return node.execute(str(folder), self.t5, self.vae, "256", dropout, "sigma").result[0]

    def train(self, model, data, **changes):
        return self.training.PixArtSigmaTrain.execute(model, data, **(TRAIN | changes)).result


@pytest.fixture(scope="module")
def t5(comfyui, tmp_path_factory):
    """PixArt Sigma T5 Loader's T5 of a 64-wide file (fp32, CPU), shared by the module's tests (it holds no state
    between encodes)."""
    folder = tmp_path_factory.mktemp("te")
    tiny_weights.write(folder / "t5_64.safetensors", tiny_weights.t5_state_dict(d_model=64))
    with pytest.MonkeyPatch.context() as patch:
        add_model_folder(patch, "text_encoders", folder)
        loader = comfyui.module("nodes.t5").PixArtSigmaT5Loader
        yield loader.execute("t5_64.safetensors", "comfyui bundled", "fp32", "cpu", True).result[0]


@pytest.fixture
def tiny(comfyui, tmp_path, monkeypatch, t5):
    return Tiny(comfyui, tmp_path, monkeypatch, t5)


def prediction(patcher, x, t, caption, mask):
    """The MODEL's DiT output (B, C_in, H, W) with its patches applied."""
    import comfy.model_management as mm

    mm.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t, caption, mask)


def probe(data):
    g = torch.Generator().manual_seed(9)
    (sample, *_) = data.buckets[(32, 32)]
    x = torch.randn(1, 4, 32, 32, generator=g)
    return x, torch.tensor([400.0]), sample.caption[None], sample.mask[None]


def test_dataset_scales_latents_and_keeps_each_caption_mask(tiny):
    from PIL import Image

    folder = tiny.folder()
    data = tiny.dataset(folder)
    assert sorted(data.buckets) == [(22, 44), (32, 32)] and len(data) == 3
    for sample in (s for samples in data.buckets.values() for s in samples):
        pixels = torch.from_numpy(np.asarray(Image.open(folder / sample.name), dtype=np.float32) / 255.0)[None]
        want = tiny.vae.encode(pixels).float()[0] * SDXL_SCALE
        assert_close(sample.latent, want, f"latent of {sample.name}", tol=1e-6)
        states, mask = tiny.t5.encode([CAPTIONS[sample.name]], max_length=300)
        assert torch.equal(sample.mask, mask[0]) and sample.mask.shape == (300,)
        assert_close(sample.caption, states[0], f"caption of {sample.name}", tol=1e-6)
    masks = {s.name: int(s.mask.sum()) for samples in data.buckets.values() for s in samples}
    assert len(set(masks.values())) == 3, masks  # one mask per caption, not a shared or averaged one
    assert int(data.empty_mask.sum()) == 1  # the empty caption caption dropout uses: just </s>


def test_training_node_equals_trainer_and_saved_lora_loads(tiny):
    import comfy.model_management as mm

    import nodes as comfy_nodes  # ComfyUI's nodes.py
    from pixart.training import Trainer, preset

    data = tiny.dataset(tiny.folder())
    model = tiny.model()
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    trained_model, result, curve = tiny.train(model, data)
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and len(result.losses) == 3
    mm.unload_all_models()
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input MODEL was changed"

    reference = tiny.reference()
    settings = preset("pixart_sigma_512_lora", mode="lora", learning_rate=1e-3, lora_rank=4, lora_alpha=8.0,
                      batch_size=2, warmup_steps=1, max_grad_norm=0.5, weight_decay=0.03, precision="fp32",
                      seed=5, vb_loss=True)  # fmt: skip
    trainer = Trainer(reference, settings)
    ordered = [data.buckets[(22, 44)], data.buckets[(32, 32)]]  # bins by size, cut into batches of 2
    losses = []
    for batch in [ordered[0], ordered[1], ordered[0]]:
        latents = torch.stack([s.latent for s in batch])
        terms = trainer.step(latents, torch.stack([s.caption for s in batch]), torch.stack([s.mask for s in batch]))
        losses.append(float(terms.total))
    assert losses == pytest.approx(result.losses, rel=1e-5)
    for (name, down, up), (_, got_down, got_up) in zip(trainer.lora.pairs(), result.lora.pairs(), strict=True):
        assert_close(got_down, down, f"{name} A", tol=1e-5)
        assert_close(got_up, up, f"{name} B", tol=1e-5)

    x, t, caption, mask = probe(data)
    reference.eval()
    with torch.no_grad():
        want = reference(x, t, caption, mask)[:, :4]
    assert_close(prediction(trained_model, x, t, caption, mask), want, "trained MODEL", tol=1e-5)
    saver = tiny.training.PixArtSigmaSaveTrained
    (paths,) = saver.execute(result, "trained", "both", "official_safetensors", "fp32").result
    assert paths.splitlines() == [
        str(tiny.work / "loras" / "trained.safetensors"),
        str(tiny.work / "loras" / "trained_peft"),
    ]
    ours = tiny.comfyui.module("nodes.lora_loader").PixArtSigmaLoraLoader
    for name in ("trained.safetensors", "trained_peft/"):
        loaded = ours.execute(tiny.model(), name, 1.0).result[0]
        assert_close(prediction(loaded, x, t, caption, mask), want, f"our loader, {name}", tol=1e-5)
    (stock,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(tiny.model(), "trained.safetensors", 1.0)
    assert_close(prediction(stock, x, t, caption, mask), want, "LoraLoaderModelOnly", tol=1e-5)
    with pytest.raises(
        tiny.comfyui.module("pixart.training").OutputExistsError, match="trained.safetensors: already exists"
    ):
        saver.execute(result, "trained", "safetensors", "official_safetensors", "fp32")


def test_full_fine_tune_model_and_file(tiny):
    data = tiny.dataset(tiny.folder())
    trained_model, result, _ = tiny.train(tiny.model(), data, mode="full", steps=1, learning_rate=1e-4, warmup_steps=0)
    x, t, caption, mask = probe(data)
    with torch.no_grad():
        want = result.model(x, t, caption, mask)[:, :4]
    assert_close(prediction(trained_model, x, t, caption, mask), want, "fully trained MODEL", tol=1e-5)
    assert not torch.allclose(prediction(tiny.model(), x, t, caption, mask), want)
    saver = tiny.training.PixArtSigmaSaveTrained
    add_path = tiny.work / "dm"
    import folder_paths

    folder_paths.add_model_folder_path("diffusion_models", str(add_path), is_default=True)
    try:
        (paths,) = saver.execute(result, "full", "safetensors", "official_safetensors", "fp32").result
        assert paths == str(add_path / "full.safetensors")
        loaded = tiny.comfyui.module("nodes.dit.model").load_model(add_path / "full.safetensors", "auto", torch.float32)
        assert_close(prediction(loaded, x, t, caption, mask), want, "saved full fine-tune", tol=1e-5)
    finally:
        folder_paths.folder_names_and_paths["diffusion_models"][0].remove(str(add_path))


def test_cancel_stops_between_steps(tiny):
    import comfy.model_management as mm
    import comfy.utils

    data = tiny.dataset(tiny.folder())
    calls = []

    def hook(value, total, *args, **kwargs):
        calls.append(value)
        mm.interrupt_current_processing(True)

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            tiny.train(tiny.model(), data, steps=5)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert calls == [1], calls  # one step ran, the second was refused before it started


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("empty", "holds no image"),
        ("no caption", r"image .*b\.png has no caption file b\.txt"),
        ("corrupt", r"c\.png is not a readable image"),
        ("rank 0", "lora_rank"),
        ("lr NaN", "learning_rate"),
        ("steps 0", "steps"),
    ],
)
def test_bad_inputs_get_our_errors(tiny, case, match):
    error = tiny.comfyui.module("pixart.training").TrainingError  # the pack's own, as ComfyUI imported it
    folder = tiny.work / "bad"
    folder.mkdir()
    if case == "no caption":
        folder = tiny.folder("bad2", {"a.png": "x", "b.png": "y"})
        (folder / "b.txt").unlink()
    elif case == "corrupt":
        folder = tiny.folder("bad3", {"a.png": "x"})
        (folder / "c.png").write_bytes(b"not an image at all")
        (folder / "c.txt").write_text("broken")
    if case in ("empty", "no caption", "corrupt"):
        with pytest.raises(error, match=match):
            tiny.dataset(folder)
        return
    data = tiny.dataset(tiny.folder())
    changes = {"rank 0": {"lora_rank": 0}, "lr NaN": {"learning_rate": math.nan}, "steps 0": {"steps": 0}}[case]
    with pytest.raises(error, match=match):
        tiny.train(tiny.model(), data, **changes)


def test_training_example_runs_headless(comfyui, server):
    """example_workflows/pixart_sigma_train_lora (256 px bins, 2 training and 2 sampling steps, fp32 T5) on the tiny
    models and a tiny dataset tiny_weights writes into ComfyUI's input folder: it trains, saves the LoRA (which our
    loader then reads) and writes the sampled image and the loss curve."""
    import io
    import json

    from PIL import Image

    prompt = json.loads((REPO / "example_workflows" / "api" / "pixart_sigma_train_lora.json").read_text())
    shrink = {"PixArtSigmaTrainingDataset": {"base_resolution": "256"}, "PixArtSigmaTrain": {"steps": 2},
              "PixArtSigmaResolution": {"base": "256"}, "PixArtSigmaSampler": {"steps": 2},
              "PixArtSigmaT5Loader": {"dtype": "fp32"}}  # fmt: skip
    for node in prompt.values():
        node["inputs"].update(shrink.get(node["class_type"], {}))
    written = tiny_weights.write_tiny_datasets(comfyui.base / "input", [prompt])  # the models are the session's
    assert written == [comfyui.base / "input" / "pixart_training"]
    entry = server.run(prompt, timeout=600)
    (image,) = [png for name, png in server.images(entry) if name.startswith("PixArtSigmaTrainedLoRA_")]
    assert Image.open(io.BytesIO(image)).size == (256, 256)
    lora = comfyui.models / "loras" / "pixart_sigma_lora.safetensors"
    read = comfyui.module("pixart.lora").load_lora(lora)
    assert len(read.targets) == 5  # the one block: attn.qkv, attn.proj, cross_attn.q_linear / kv_linear / proj
