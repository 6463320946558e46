"""save_pretrained / from_pretrained: round trips, tied weights, errors, atomicity, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import diffcore.pretrained as pretrained
from diffcore.pretrained import PretrainedMixin, capture_config, load_state, read_json, save_state


class TinyMLP(PretrainedMixin, nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 16, depth: int = 2):
        super().__init__()
        self.config = capture_config(locals())
        layers: list[nn.Module] = [nn.Linear(dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.Linear(hidden, dim))
        self.register_buffer("scale", torch.ones(dim))

    def forward(self, x):
        return self.body(x) * self.scale


class TinyMLPWithGate(TinyMLP):
    pass


class TiedLM(PretrainedMixin, nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        self.config = {"vocab": vocab, "dim": dim}
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight  # weight tying: one storage under two names

    def forward(self, tokens):
        return self.out(self.embed(tokens))


class Other(PretrainedMixin, nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 16, depth: int = 2):
        super().__init__()
        self.config = capture_config(locals())
        self.lin = nn.Linear(dim, dim)


def _model(seed: int = 0, **kw) -> TinyMLP:
    torch.manual_seed(seed)
    m = TinyMLP(**kw)
    m.scale.fill_(1.5)
    return m


def test_round_trip_identical_outputs(tmp_path):
    m = _model(depth=3)
    m.save_pretrained(tmp_path / "m", extra={"mel_config.json": {"n_mels": 80}})
    loaded = TinyMLP.from_pretrained(tmp_path / "m")
    assert type(loaded) is TinyMLP and loaded.config == m.config and not loaded.training
    x = torch.randn(5, 3)
    torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)
    assert torch.equal(loaded.scale, torch.full((3,), 1.5))  # buffers travel too
    header = json.loads((tmp_path / "m" / "config.json").read_text())
    assert header == {"class": f"{__name__}:TinyMLP", "config": {"dim": 3, "hidden": 16, "depth": 3},
                      "format_version": 1}
    assert read_json(tmp_path / "m", "mel_config.json") == {"n_mels": 80}


def test_only_json_and_safetensors_and_no_unpickling(tmp_path, monkeypatch):
    _model().save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]

    def no_pickle(*a, **k):
        raise AssertionError("from_pretrained must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr("pickle.load", no_pickle)
    monkeypatch.setattr("pickle.loads", no_pickle)
    TinyMLP.from_pretrained(tmp_path / "m")


def test_tied_weights_survive(tmp_path):
    torch.manual_seed(0)
    m = TiedLM()
    m.save_pretrained(tmp_path / "lm")
    loaded = TiedLM.from_pretrained(tmp_path / "lm")
    assert loaded.out.weight is loaded.embed.weight
    torch.testing.assert_close(loaded.embed.weight, m.embed.weight, rtol=0, atol=0)
    tokens = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded(tokens), m(tokens), rtol=0, atol=0)


def test_base_class_loads_saved_subclass(tmp_path):
    torch.manual_seed(0)
    TinyMLPWithGate().save_pretrained(tmp_path / "m")
    assert type(TinyMLP.from_pretrained(tmp_path / "m")) is TinyMLPWithGate


def test_wrong_class_errors_naming_both(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    with pytest.raises(TypeError, match="TinyMLP.*not.*Other"):
        Other.from_pretrained(tmp_path / "m")
    _model().save_pretrained(tmp_path / "m")
    with pytest.raises(TypeError, match="TinyMLP"):  # a base class does not load as its subclass
        TinyMLPWithGate.from_pretrained(tmp_path / "m")


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        TinyMLP.from_pretrained(tmp_path / "nowhere")
    _model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing.*save_pretrained"):
        TinyMLP.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing.*save_pretrained"):
        TinyMLP.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"extra"):
        read_json(tmp_path / "m", "mel_config.json")


def test_mismatched_keys_are_listed(tmp_path):
    _model(depth=2).save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    header = json.loads(cfg_path.read_text())
    header["config"]["depth"] = 3
    cfg_path.write_text(json.dumps(header))
    with pytest.raises(ValueError, match=r"missing \(2\): body\.\d\.weight"):
        TinyMLP.from_pretrained(tmp_path / "m")
    header["config"]["hidden"] = 8
    cfg_path.write_text(json.dumps(header))
    with pytest.raises(ValueError, match="wrong shape"):
        TinyMLP.from_pretrained(tmp_path / "m", strict=False)


def test_config_checked_at_save_time(tmp_path):
    m = _model()
    m.config = {"dim": 3, "width": 4}
    with pytest.raises(ValueError, match=r"unknown keys \['width'\]"):
        m.save_pretrained(tmp_path / "m")
    m.config = {"dim": torch.ones(1)}
    with pytest.raises(TypeError, match="JSON"):
        m.save_pretrained(tmp_path / "m")
    del m.config
    with pytest.raises(TypeError, match="self.config"):
        m.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_interrupted_save_keeps_previous_model(tmp_path, monkeypatch):
    old = _model(seed=0)
    old.save_pretrained(tmp_path / "m")
    real_save_file = pretrained.save_file

    def crash_mid_write(tensors, filename, metadata=None):
        real_save_file(dict(list(tensors.items())[:1]), filename, metadata=metadata)  # a partial file
        raise KeyboardInterrupt("simulated crash during save")

    monkeypatch.setattr(pretrained, "save_file", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        _model(seed=1, depth=3).save_pretrained(tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directories left behind
    loaded = TinyMLP.from_pretrained(tmp_path / "m")
    x = torch.randn(4, 3)
    torch.testing.assert_close(loaded(x), old(x), rtol=0, atol=0)

    monkeypatch.setattr(pretrained, "save_file", real_save_file)
    new = _model(seed=1, depth=3)
    new.save_pretrained(tmp_path / "m")  # a complete save does replace it
    torch.testing.assert_close(TinyMLP.from_pretrained(tmp_path / "m")(x), new(x), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_refuses_to_replace_a_non_model_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing"):
        _model().save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_save_state_round_trip(tmp_path):
    w = torch.randn(3, 4)
    tensors = {"a": w, "a_alias": w, "b": torch.arange(5)}  # shared storage is saved as copies
    save_state(tmp_path / "ema.safetensors", tensors, {"num_updates": 7, "decay": 0.999})
    loaded, meta = load_state(tmp_path / "ema.safetensors")
    assert meta == {"num_updates": 7, "decay": 0.999}
    assert loaded.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(loaded[k], tensors[k])
    with pytest.raises(FileNotFoundError, match="save_state"):
        load_state(tmp_path / "missing.safetensors")
