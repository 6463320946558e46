"""EMA and the DiffusionModule base: training, NaN stop, EMA checkpoint/resume, LR schedule, clipping."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diffcore.lightning import EMA, DiffusionModule, NonFiniteLossError, lr_factor
from diffcore.losses import dsm_loss
from diffcore.pretrained import PretrainedMixin, capture_config
from diffcore.schedules import CosineSchedule

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers",
                                        "ignore:.*is smaller than the logging",
                                        "ignore:.*but have no `val_dataloader`",
                                        "ignore:.*LeafSpec.*is deprecated",
                                        "ignore:The dirpath has changed")

MEAN, STD = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])


class MLPDenoiser(PretrainedMixin, nn.Module):
    """eps-prediction MLP on 2-D points, conditioned on t by concatenation."""

    def __init__(self, dim: int = 2, hidden: int = 64):
        super().__init__()
        self.config = capture_config(locals())
        self.body = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, dim))

    def forward(self, x_t, c_noise):
        return self.body(torch.cat([x_t, c_noise[:, None]], dim=-1))


class GaussianDenoising(DiffusionModule):
    """Batches are (x0, t, noise): fixed t and noise make runs reproducible step for step."""

    def __init__(self, net: nn.Module, **kw):
        super().__init__(net, **kw)
        self.schedule = CosineSchedule()

    def compute_loss(self, batch):
        x0, t, noise = batch
        return dsm_loss(self.net, x0, self.schedule, t=t, noise=noise)


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x0 = MEAN + STD * torch.randn(n, 2, generator=g)
    return TensorDataset(x0, torch.rand(n, generator=g).clamp(min=1e-3), torch.randn(n, 2, generator=g))


def _loader(n: int = 256, seed: int = 0) -> DataLoader:
    return DataLoader(_data(n, seed), batch_size=32, shuffle=False)  # 8 batches per epoch


def _system(seed: int = 0, **kw) -> GaussianDenoising:
    torch.manual_seed(seed)
    kw = {"lr": 3e-3, "ema_decay": 0.99, **kw}
    return GaussianDenoising(MLPDenoiser(), **kw)


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    kw = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": True,
          "default_root_dir": tmp_path, "enable_progress_bar": False, "enable_model_summary": False,
          "num_sanity_val_steps": 0, **kw}
    return L.Trainer(**kw)


def _ckpts(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.rglob("*.ckpt"))


def _load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # our own test checkpoint


# --------------------------------------------------------------------------------------------------
# EMA


class Two(nn.Module):
    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, dtype=dtype))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("table", torch.arange(4.0), persistent=False)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_closed_form_average(warmup):
    torch.manual_seed(0)
    m = Two()
    decay = 0.9
    ema = EMA(m, decay=decay, warmup=warmup)
    values = [torch.randn(3, dtype=torch.float64) for _ in range(25)]
    for k, v in enumerate(values):
        with torch.no_grad():
            m.w.copy_(v)
            m.count.fill_(k)
        ema.update(m)
    # ema_n = (prod_k d_k) * w_init + sum_k (1 - d_k) (prod_{j > k} d_j) v_k, with w_init = 0
    d = [min(decay, (1 + k) / (10 + k)) if warmup else decay for k in range(len(values))]
    expected = sum((1 - d[k]) * math.prod(d[k + 1:]) * v for k, v in enumerate(values))
    if not warmup:  # constant decay: the geometric weights (1 - d) d^(n-1-k)
        n = len(values)
        geometric = sum((1 - decay) * decay ** (n - 1 - k) * v for k, v in enumerate(values))
        torch.testing.assert_close(expected, geometric)
    torch.testing.assert_close(ema.params["w"], expected, rtol=1e-12, atol=1e-12)
    assert ema.buffers["count"].item() == 24  # buffers are copied, not averaged
    assert ema.num_updates == 25


def test_ema_swap_restores_raw_weights_and_keeps_fp32():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).to(torch.bfloat16)
    ema = EMA(net, decay=0.5, warmup=False)
    assert all(t.dtype == torch.float32 for t in ema.params.values())
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(net)
    raw = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.swap(net):
        for name, p in net.named_parameters():
            assert torch.equal(p, ema.params[name].to(p.dtype))
        assert not torch.equal(net[0].weight, raw["0.weight"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, raw[k])
    with pytest.raises(RuntimeError, match="boom"), ema.swap(net):
        raise RuntimeError("boom")
    assert torch.equal(net[0].weight, raw["0.weight"]) and not ema.is_swapped


def test_ema_state_dict_round_trip():
    torch.manual_seed(0)
    m = Two()
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.w.add_(1.0)
    ema.update(m)
    other = EMA(Two(), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.params["w"], ema.params["w"])
    with pytest.raises(KeyError, match="missing"):
        EMA(nn.Linear(2, 2)).load_state_dict(ema.state_dict())
    other.reset(m.state_dict())  # a checkpoint's state dict: without the non-persistent buffer
    assert other.num_updates == 0 and torch.equal(other.params["w"], m.w.detach())
    other.reset(Two())
    assert torch.equal(other.params["w"], torch.zeros(3, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# DiffusionModule


def test_training_reduces_loss_and_checkpoints_ema(tmp_path):
    system = _system(ema_decay=0.9)
    held_out = _data(1024, seed=123).tensors
    with torch.no_grad():
        before = system.compute_loss(held_out).item()
    _trainer(tmp_path, max_steps=64).fit(system, _loader())
    with torch.no_grad():
        after = system.compute_loss(held_out).item()
        with system.ema_weights():
            after_ema = system.compute_loss(held_out).item()
    assert after < 0.8 * before, (before, after)
    assert after_ema < 0.8 * before, (before, after_ema)

    (ckpt_path,) = _ckpts(tmp_path)
    ckpt = _load_ckpt(ckpt_path)
    assert ckpt["ema"]["num_updates"] == 64 == system.ema.num_updates
    for name, value in system.ema.params.items():
        assert torch.equal(ckpt["ema"]["params"][name], value)
        assert value.dtype == torch.float32

    # save_pretrained exports the EMA weights of the net
    system.save_pretrained(tmp_path / "export")
    exported = MLPDenoiser.from_pretrained(tmp_path / "export")
    for name, p in exported.named_parameters():
        assert torch.equal(p, system.ema.params[name])


class RecordEMA(Callback):
    def on_train_start(self, trainer, pl_module):
        self.at_start = {k: v.clone() for k, v in pl_module.ema.params.items()}
        self.updates_at_start = pl_module.ema.num_updates


def test_resume_restores_ema_exactly(tmp_path):
    # one batch per epoch, the same every step: where Lightning resumes within the data cannot matter
    loader = _loader(n=32)
    straight = _system(seed=0)
    _trainer(tmp_path / "straight", max_steps=32, enable_checkpointing=False).fit(straight, loader)

    first = _system(seed=0)
    _trainer(tmp_path / "first", max_steps=16).fit(first, loader)
    (ckpt_path,) = _ckpts(tmp_path / "first")
    saved = _load_ckpt(ckpt_path)["ema"]

    resumed, record = _system(seed=1), RecordEMA()  # different init: everything must come from the ckpt
    _trainer(tmp_path / "resumed", max_steps=32, callbacks=[record]).fit(resumed, loader, ckpt_path=ckpt_path)
    assert record.updates_at_start == 16
    for name, value in saved["params"].items():
        assert torch.equal(record.at_start[name], value)
    assert resumed.ema.num_updates == 32
    for name, value in straight.ema.params.items():
        torch.testing.assert_close(resumed.ema.params[name], value, rtol=1e-6, atol=1e-7)
    for (name, p), q in zip(straight.net.named_parameters(), resumed.net.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)


class NaNAfter(GaussianDenoising):
    def __init__(self, net: nn.Module, bad_step: int, **kw):
        super().__init__(net, **kw)
        self.bad_step = bad_step

    def compute_loss(self, batch):
        loss = super().compute_loss(batch)
        return loss * float("nan") if self.global_step >= self.bad_step else loss


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    system = NaNAfter(MLPDenoiser(), bad_step=6, lr=3e-3, ema_decay=0.9)
    every3 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    with pytest.raises(FloatingPointError) as info:
        _trainer(tmp_path, max_steps=50, callbacks=[every3]).fit(system, _loader())
    assert isinstance(info.value, NonFiniteLossError)
    message = str(info.value)
    for needle in ("nan", "global step 6", "learning rate", "gradient_clip_val", "bf16", "data"):
        assert needle in message, needle
    ckpts = _ckpts(tmp_path)
    assert [p.name for p in ckpts] == ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt"]
    last = _load_ckpt(ckpts[-1])
    assert last["global_step"] == 6 and last["ema"]["num_updates"] == 6
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


class ClipRecorder(GaussianDenoising):
    def compute_loss(self, batch):
        return 10 * super().compute_loss(batch)  # large gradients, so that clipping at 1.0 is active

    def on_before_optimizer_step(self, optimizer):
        self.raw_norms.append(_grad_norm(self))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.clipped_norms.append(_grad_norm(self))


def _grad_norm(module: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])).item()


def test_gradient_clipping_bf16_and_lr_decay_from_trainer(tmp_path):
    torch.manual_seed(0)
    system = ClipRecorder(MLPDenoiser(), lr=1e-2, warmup_steps=4, lr_decay="linear", max_steps=None,
                          ema_decay=0.9)
    system.raw_norms, system.clipped_norms = [], []
    trainer = _trainer(tmp_path, max_steps=16, gradient_clip_val=1.0, precision="bf16-mixed",
                       accumulate_grad_batches=2)
    trainer.fit(system, _loader(n=512))
    assert len(system.clipped_norms) == 16
    assert max(system.raw_norms) > 1.0  # clipping had something to do
    assert max(system.clipped_norms) <= 1.0 + 1e-4
    assert all(v.dtype == torch.float32 for v in system.ema.params.values())
    assert system.ema.num_updates == 16  # once per optimizer step, not per batch (2 batches per step)
    # max_steps=None: the linear decay ends at the Trainer's 16 steps
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_lr_schedule_values():
    assert [lr_factor(s, warmup_steps=10) for s in (0, 4, 9, 10, 500)] == pytest.approx([0.1, 0.5, 1, 1, 1])
    steps = (9, 10, 35, 60, 85, 110, 200)
    cos = [lr_factor(s, warmup_steps=10, decay="cosine", total_steps=110) for s in steps]
    c = 0.5 * math.cos(math.pi / 4)
    assert cos == pytest.approx([1, 1, 0.5 + c, 0.5, 0.5 - c, 0, 0])
    lin = [lr_factor(s, warmup_steps=0, decay="linear", total_steps=100) for s in (0, 25, 100)]
    assert lin == pytest.approx([1, 0.75, 0])
    # warmup-stable-decay: full rate until the last 40 of 110 steps, then linear to 0
    wsd = [lr_factor(s, warmup_steps=10, decay="linear", total_steps=110, decay_steps=40) for s in (9, 50, 70, 90, 110)]
    assert wsd == pytest.approx([1, 1, 1, 0.5, 0])
    # a decay longer than the steps after the warmup starts right after it
    assert lr_factor(60, warmup_steps=10, decay="linear", total_steps=110, decay_steps=500) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="decay_steps"):
        _system(lr_decay="linear", max_steps=100, decay_steps=0)

    system = _system(lr=2.0, warmup_steps=10, lr_decay="cosine", max_steps=110, weight_decay=0.1)
    conf = system.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    seen = {}
    for step in range(111):
        seen[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(0.2) and seen[4] == pytest.approx(1.0) and seen[9] == pytest.approx(2.0)
    assert seen[60] == pytest.approx(1.0) and seen[110] == pytest.approx(0.0, abs=1e-12)
    # weight decay only on matrices: biases (ndim < 2) are in the no-decay group
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(system.parameters()))


class ValidationSpy(GaussianDenoising):
    def validation_step(self, batch, batch_idx):
        params = self.net.named_parameters()
        self.val_saw_ema.append(all(torch.equal(p, self.ema.params[n]) for n, p in params))
        return super().validation_step(batch, batch_idx)


def test_validation_uses_ema_and_checkpoint_holds_raw_weights(tmp_path):
    torch.manual_seed(0)
    system = ValidationSpy(MLPDenoiser(), lr=3e-3, ema_decay=0.9)
    system.val_saw_ema = []
    # saving in on_validation_end: the checkpoint is written while the EMA weights are swapped in
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_on_train_epoch_end=False)
    trainer = _trainer(tmp_path, max_steps=16, callbacks=[ckpt_cb], limit_val_batches=2)
    trainer.fit(system, _loader(), val_dataloaders=_loader(64, seed=1))
    assert system.val_saw_ema == [True] * 4  # 2 epochs x 2 batches
    assert "val/loss" in trainer.callback_metrics
    raw = dict(system.net.named_parameters())
    assert not all(torch.equal(p, system.ema.params[n]) for n, p in raw.items())  # raw weights are back
    (ckpt_path,) = _ckpts(tmp_path)
    ckpt = _load_ckpt(ckpt_path)
    for name, p in raw.items():
        assert torch.equal(ckpt["state_dict"][f"net.{name}"], p)
        assert torch.equal(ckpt["ema"]["params"][name], system.ema.params[name])


class VectorLoss(GaussianDenoising):
    def compute_loss(self, batch):
        return torch.ones(3)


def test_compute_loss_must_be_scalar():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="scalar"):
        VectorLoss(MLPDenoiser()).training_step(next(iter(_loader())), 0)


def test_without_ema(tmp_path):
    system = _system(ema_decay=None)
    assert system.ema is None
    with system.ema_weights() as net:
        assert net is system.net
    checkpoint = {"state_dict": system.state_dict()}
    system.on_save_checkpoint(checkpoint)
    assert "ema" not in checkpoint
    system.save_pretrained(tmp_path / "export")
    exported = MLPDenoiser.from_pretrained(tmp_path / "export")
    for (name, p), q in zip(system.net.named_parameters(), exported.parameters(), strict=True):
        assert torch.equal(p, q), name
