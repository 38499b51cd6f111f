"""PixArt Sigma CLIP Text Encode (marker ``comfy``) on a stock ComfyUI CLIP equals PixArt Sigma T5 Loader + Text
Encode on the same T5 file (<= 1e-5 relative, identical masks), and the plain CLIPTextEncode does not; in the
session's ComfyUI, for each file format.

The CLIP is loaded the way CLIPLoader loads it, ``comfy.sd.load_clip(paths, clip_type=SD3 or PIXART)``, from a tiny
random T5 v1.1 (2 layers, width 32, the full 32128-row vocabulary so ComfyUI's bundled tokenizer fits) in ComfyUI's
single-file key layout, stored as fp16, fp8_e4m3fn or ComfyUI scaled fp8 (``scale_weight`` per Linear, the
``scaled_fp8`` marker; in both fp8 files the embedding and norms are fp16, as in ComfyUI's released fp8 T5 files:
CLIPLoader type sd3 stores its T5 in at most fp16 on the CPU, so fp32 tensors would be rounded there). Two things differ
from loading a real T5-XXL, both because ComfyUI would otherwise build the full 24-layer, 4096-wide T5-XXL whatever the
file holds (too slow on CPU, and the tiny file would not fit it):

- ``model_options={"t5xxl_model_config": {...}}``: ComfyUI's own per-model config override (``SDClipModel`` copies
  ``<model_name>_model_config`` into the json config of ``sd3_clip.T5XXLModel``, which ``pixart_t5`` subclasses, in
  both trees), so ComfyUI builds its T5 in the tiny file's sizes. Nothing of ComfyUI is patched for this.
- ``comfy.sd.detect_te_model`` and ``comfy.sd.t5xxl_detect`` are wrapped: ComfyUI recognises T5-XXL only by block 23's
  feed-forward (10240 rows in 0.33, 4096 columns in 0.3.64), which a 2-layer file lacks. For a state dict holding
  block 0's gated feed-forward and no block 23 the wrappers answer "T5-XXL" and run ComfyUI's own
  ``sd3_clip.t5_xxl_detect`` on it (weight dtype, scaled-fp8 / quantization detection); every other state dict goes
  to the originals (for the test only: ``monkeypatch`` puts them back).

So ComfyUI's real loader, tokenizer, T5 code, fp8 ops and memory manager run; only the sizes are tiny.
"""

from __future__ import annotations

import pytest
from node_calls import add_model_folder, assert_close

pytestmark = pytest.mark.comfy

TINY = {"d_model": 32, "num_heads": 4, "d_kv": 8, "d_ff": 64, "num_layers": 2}  # t5_fixtures.tiny_config's sizes
BLOCK_0_FF = "encoder.block.0.layer.1.DenseReluDense.wi_1.weight"
BLOCK_23_FF = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"
SCALES = (".scale_weight", ".scale_input")  # scaled fp8: per-tensor fp32 factors
LONG = ", ".join(f"Word{i} in the Golden Light" for i in range(120))  # about 600 T5 tokens: cut at 300 and 120
PROMPTS = ("A Red Fox in the SNOW, 35mm photo.", "", LONG)
FORMATS = ("fp16", "fp8_e4m3fn", "fp8_scaled")


def write_t5(work, file_format: str):
    """The tiny T5 file in ComfyUI's key layout (see the module docstring)."""
    import t5_fixtures
    import torch

    model = t5_fixtures.tiny_t5(t5_fixtures.tiny_config(vocab_size=32128, **TINY), seed=7)
    path = work / "text_encoders" / f"t5_tiny_{file_format}.safetensors"
    if file_format == "fp16":
        return t5_fixtures.write_single_file(path, t5_fixtures.encoder_state(model), dtype=torch.float16)
    stored, _ = t5_fixtures.fp8_quantize(model, torch.float8_e4m3fn, scaled=file_format == "fp8_scaled")
    half = {k: v.half() for k, v in stored.items() if v.dtype == torch.float32 and not k.endswith(SCALES)}
    return t5_fixtures.write_single_file(path, stored | half)


def recognise_tiny_t5(monkeypatch) -> None:
    """Wrap ComfyUI's T5-XXL detection so the tiny file counts as T5-XXL (see the module docstring)."""
    import comfy.sd
    import comfy.text_encoders.sd3_clip as sd3_clip

    detect_te_model, t5xxl_detect = comfy.sd.detect_te_model, comfy.sd.t5xxl_detect

    def tiny(sd) -> bool:
        return BLOCK_0_FF in sd and BLOCK_23_FF not in sd

    monkeypatch.setattr(
        comfy.sd, "detect_te_model", lambda sd: comfy.sd.TEModel.T5_XXL if tiny(sd) else detect_te_model(sd)
    )

    def detect(clip_data):
        found = [sd for sd in clip_data if tiny(sd)]
        return sd3_clip.t5_xxl_detect(found[0]) if found else t5xxl_detect(clip_data)

    monkeypatch.setattr(comfy.sd, "t5xxl_detect", detect)


@pytest.fixture
def one_thread():
    """Tiny matmuls: a second thread only adds synchronisation (100x slower on a busy host)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("file_format", FORMATS)
def test_clip_encode_equals_t5_loader(comfyui, one_thread, tmp_path, monkeypatch, file_format) -> None:
    """Both CLIP types on one file format: our node's CONDITIONING equals PixArt Sigma Text Encode's for a short,
    an empty and an over-long prompt (Sigma and alpha); the CLIP went through ComfyUI's memory manager; the stock
    CLIPTextEncode result differs."""
    import comfy.model_management as mm
    import comfy.sd
    import torch

    import nodes as comfy_nodes  # ComfyUI's nodes.py

    clip_encode = comfyui.module("nodes.clip_encode")
    text_encode = comfyui.module("nodes.text_encode")
    t5_loader = comfyui.module("nodes.t5_loader")

    recognise_tiny_t5(monkeypatch)
    path = write_t5(tmp_path, file_format)
    add_model_folder(monkeypatch, "text_encoders", path.parent)
    ours = t5_loader.PixArtSigmaT5Loader.execute(path.name, "comfyui bundled", "fp32", "cpu", True).result[0]

    def conditioning(node, encoder, text, family):
        ((states, extra),) = node.execute(encoder, text, family).result[0]
        return states, extra

    for clip_type in (comfy.sd.CLIPType.SD3, comfy.sd.CLIPType.PIXART):
        clip = comfy.sd.load_clip([str(path)], clip_type=clip_type, model_options={"t5xxl_model_config": dict(TINY)})
        what = f"{file_format} file, CLIP type {clip_type.name}"
        for family, text in [(f, t) for f in ("sigma", "alpha") for t in PROMPTS]:
            got, got_extra = conditioning(clip_encode.PixArtSigmaCLIPTextEncode, clip, text, family)
            want, want_extra = conditioning(text_encode.PixArtSigmaTextEncode, ours, text, family)
            kept = {"sigma": 300, "alpha": 120}[family] if text == LONG else None
            assert got.shape == want.shape and (kept is None or got.shape[1] == kept), (what, got.shape, want.shape)
            assert torch.equal(got_extra["attention_mask"], want_extra["attention_mask"]), what
            assert got_extra.keys() == want_extra.keys() and got.dtype == want.dtype == torch.float32, what
            assert_close(got, want, f"{what}, {family}, prompt {text[:20]!r}")
        loaded = [m.model for m in mm.current_loaded_models]
        assert any(m is clip.patcher for m in loaded), f"{what}: the CLIP was not loaded through the memory manager"
        ((stock, _),) = comfy_nodes.CLIPTextEncode().encode(clip, PROMPTS[0])[0]
        mine, _ = conditioning(clip_encode.PixArtSigmaCLIPTextEncode, clip, PROMPTS[0], "sigma")
        same = stock.shape == mine.shape and torch.allclose(stock, mine, rtol=1e-3, atol=1e-5)
        assert not same, f"{what}: stock CLIPTextEncode gave our conditioning; the comparison cannot fail"
