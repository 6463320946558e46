"""The t2s recipes end to end on a two-clip captioned folder: LightningCLI(run=False) builds the VAE and the
latent diffusion model from recipes/t2s/*_tiny.yaml; each overfits its tiny batch; the VAE measures its
statistics and exports; the LDM exports a pipeline that generates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiodiff.t2s import AudioPipeline, LatentDiffusionModule, MelVAE, VAEModule, export_pipeline, export_vae
from audiodiff.t2s.cli import fit

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers", "ignore:.*is smaller than the logging",
                                        "ignore:.*LeafSpec.*is deprecated", "ignore:.*overridden `on_after_batch",
                                        "ignore:.*tensorboardX.*", "ignore:The dirpath has changed",
                                        "ignore:.*Checkpoint directory.*exists")

ROOT = Path(__file__).resolve().parents[1]
SR = 22050
CAPTIONS = {"beep": "a high beep", "hum": "a low hum"}
COMMON = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.num_sanity_val_steps", "0",
          "--data.init_args.segment_frames", "32", "--data.init_args.batch_size", "2",
          "--data.init_args.num_workers", "0", "--data.init_args.val_clips", "2", "--data.init_args.kinds", "null",
          "--data.init_args.train_repeat", "4"]


def write_folder(root: Path) -> Path:
    t = np.arange(int(0.5 * SR)) / SR
    env = np.minimum(1, 20 * t) * np.minimum(1, 20 * (0.5 - t))
    waves = {"beep": 0.3 * np.sin(2 * np.pi * 1760 * t) * env,
             "hum": 0.3 * np.sign(np.sin(2 * np.pi * 220 * t)) * env}
    for split in ("train", "validation"):
        (root / split).mkdir(parents=True)
        for name, w in waves.items():
            sf.write(root / split / f"{name}.wav", w.astype(np.float32), SR, subtype="PCM_16")
        (root / split / "metadata.csv").write_text("file_name,caption\n" + "".join(
            f"{name}.wav,{CAPTIONS[name]}\n" for name in waves))
    return root


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory, loss_recorder):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("t2s")
    data = write_folder(tmp / "data")
    cli = fit(["-c", str(ROOT / "recipes/_base/trainer.yaml"), "-c", str(ROOT / "recipes/t2s/vae_tiny.yaml"),
               "--data.init_args.root", str(data), *COMMON,
               "--model.init_args.lr", "3e-3", "--model.init_args.warmup_steps", "0",
               "--model.init_args.lr_decay", "constant", "--model.init_args.ema_decay", "0.8",
               "--model.init_args.calibration_batches", "2",
               "--trainer.max_steps", "60", "--trainer.val_check_interval", "60",
               "--trainer.default_root_dir", str(tmp / "vae_run")], run=False)
    assert isinstance(cli.model, VAEModule) and isinstance(cli.model.net, MelVAE)
    losses = loss_recorder()
    cli.trainer.callbacks.append(losses)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = tmp / "vae.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    return {"tmp": tmp, "data": data, "cli": cli, "losses": losses.losses, "ckpt": ckpt}


def test_vae_recipe_overfits_and_measures_its_statistics(trained_vae):
    losses, model = trained_vae["losses"], trained_vae["cli"].model
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    assert model.net.is_calibrated and float(model.net.latent_scale) > 0
    assert float(model.net.mel_std.min()) > 0 and not torch.allclose(model.net.mel_mean, model.net.mel_mean[0])


def test_vae_export_measures_the_latent_scale_on_the_training_data(trained_vae):
    out = export_vae(trained_vae["ckpt"], trained_vae["tmp"] / "vae", batches=2)
    vae = MelVAE.from_pretrained(out)
    assert vae.is_calibrated
    # the stored scale makes the data's latents unit-variance (on batches like those it was measured on)
    model = trained_vae["cli"].model
    with model.ema_weights():
        ema_state = {k: v.clone() for k, v in model.net.state_dict().items()}
    for k in ("encoder.0.weight", "decoder.0.weight", "mel_mean"):
        torch.testing.assert_close(vae.state_dict()[k], ema_state[k])


def ldm_args(trained_vae: dict, vae_dir: Path, run: str, steps: int, *recipes: str) -> list[str]:
    """ldm_tiny (+ ``recipes`` after it), shrunk for the test's folder of two clips."""
    tmp = trained_vae["tmp"]
    files = ["recipes/_base/trainer.yaml", "recipes/t2s/ldm_tiny.yaml", *recipes]
    return [*(a for f in files for a in ("-c", str(ROOT / f))),
            "--data.init_args.root", str(trained_vae["data"]), *COMMON,
            "--model.init_args.vae", str(vae_dir),
            "--model.init_args.text_encoder", "audiodiff.t2s.ByteTextEncoder",
            "--model.init_args.net.init_args.text_vocab_size", "259",
            "--model.init_args.net.init_args.text_encoder_dim", "32",
            "--model.init_args.net.init_args.text_encoder_depth", "1",
            "--model.init_args.net.init_args.channels", "[32, 32]",
            "--model.init_args.net.init_args.emb_dim", "64",
            "--model.init_args.cache_path", str(tmp / "captions.safetensors"),
            "--model.init_args.latent_cache_dir", str(tmp / run),
            "--model.init_args.lr", "2e-3", "--model.init_args.warmup_steps", "0",
            "--model.init_args.lr_decay", "constant", "--model.init_args.ema_decay", "0.8",
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
            "--trainer.default_root_dir", str(tmp / run)]


def test_ldm_recipe_overfits_and_exports_a_pipeline(trained_vae):
    tmp = trained_vae["tmp"]
    vae_dir = tmp / "vae_for_ldm"
    trained_vae["cli"].model.save_pretrained(vae_dir)  # EMA weights with the statistics measured at the end
    torch.manual_seed(0)
    cli = fit(ldm_args(trained_vae, vae_dir, "ldm_run", 150), run=False)
    model = cli.model
    assert isinstance(model, LatentDiffusionModule) and model.caption_dropout == 0.1
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.val_dataloader()))
    batch = model.on_after_batch_transfer(batch, 0)

    def fixed_loss() -> float:  # the same t and noise every time (evaluation mode)
        model.eval()
        with torch.no_grad():
            loss = float(model.compute_loss(batch))
        model.train()  # Lightning keeps the mode it finds
        return loss

    before = fixed_loss()
    cli.trainer.fit(model, datamodule=cli.datamodule)
    after = fixed_loss()
    assert after < 0.6 * before, (before, after)
    assert (tmp / "captions.safetensors").is_file() and set(model.cache.store) >= {"", *CAPTIONS.values()}

    ckpt = tmp / "ldm.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    pipe = AudioPipeline.from_pretrained(export_pipeline(ckpt, tmp / "pipe", steps=4, guidance=2.0))
    assert pipe.steps == 4 and pipe.guidance == 2.0
    out = pipe(list(CAPTIONS.values()), seconds=0.4, seed=0)
    assert out.audio.shape == (2, round(0.4 * SR / 256) * 256) and torch.isfinite(out.audio).all()
    # the in-process export (EMA weights) and the checkpoint export hold the same weights
    model.save_pipeline(tmp / "pipe2", steps=4, guidance=2.0)
    again = AudioPipeline.from_pretrained(tmp / "pipe2")(list(CAPTIONS.values()), seconds=0.4, seed=0)
    assert torch.equal(again.latents, out.latents)


def test_high_noise_expert_recipe_joins_the_pipeline(trained_vae):
    """ldm_tiny_high trains the same net on t in [0.8, 1] only; exported with --high it samples above the
    boundary, and the export refuses a boundary outside the experts' ranges or experts of other VAEs."""
    from audiodiff.t2s import TimeSplitDenoiser

    tmp = trained_vae["tmp"]
    vae_dir = tmp / "vae_for_ldm"
    if not vae_dir.is_dir():
        trained_vae["cli"].model.save_pretrained(vae_dir)
    ckpts = {}
    for name, extra in (("low", ()), ("high", ("recipes/t2s/ldm_tiny_high.yaml",))):
        torch.manual_seed(0)
        cli = fit(ldm_args(trained_vae, vae_dir, f"expert_{name}", 20, *extra), run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        ckpts[name] = tmp / f"{name}.ckpt"
        cli.trainer.save_checkpoint(ckpts[name])
    assert cli.model.train_t == (0.8, 1.0) and cli.model.weighting == "x0"
    pipe = AudioPipeline.from_pretrained(export_pipeline(ckpts["low"], tmp / "pipe2", high=ckpts["high"], steps=4))
    assert isinstance(pipe.denoiser, TimeSplitDenoiser) and pipe.denoiser.boundary == 0.85
    out = pipe(list(CAPTIONS.values()), seconds=0.4, seed=0)
    assert torch.isfinite(out.audio).all()
    with pytest.raises(ValueError, match=r"boundary 0.5 must lie in both experts' training ranges"):
        export_pipeline(ckpts["low"], tmp / "pipe3", high=ckpts["high"], boundary=0.5)
    assert not (tmp / "pipe3").exists()
