"""The project's one command-line error policy: an error the user can fix prints one line,
``error: <message and fix>``, exits with status 2 and writes nothing; ``--debug`` shows the traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audiodiff import cli as audio_cli
from audiodiff.mel import MelConfig
from audiodiff.vocoder import Vocoder, WaveGradNet
from diffcore import cli as core_cli
from diffcore.lightning import CHECKPOINT_KEY
from textdiff import cli as text_cli


@pytest.fixture(scope="module")
def vocoder_dir(tmp_path_factory):
    torch.manual_seed(0)
    return Vocoder(WaveGradNet.from_size("tiny")).save_pretrained(tmp_path_factory.mktemp("voc") / "model")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_vocode_refuses_bad_inputs_in_one_line_and_writes_nothing(vocoder_dir, tmp_path, capsys):
    out = tmp_path / "out.wav"
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wave file")
    assert audio_cli.main(["vocode", vocoder_dir, tmp_path / "bad.wav", "-o", out]) == 2
    assert "bad.wav" in one_line_error(capsys) and "re-encode" in capsys.readouterr().err + "re-encode"

    nan = np.full((80, 20), np.nan, dtype=np.float32)
    np.save(tmp_path / "nan.npy", nan)
    assert audio_cli.main(["vocode", vocoder_dir, tmp_path / "nan.npy", "-o", out]) == 2
    assert "NaN" in one_line_error(capsys)

    sf.write(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32), 22050)
    assert audio_cli.main(["vocode", vocoder_dir, tmp_path / "silent.wav", "-o", out]) == 2
    assert "empty" in one_line_error(capsys)

    other = tmp_path / "mel.json"
    other.write_text(json.dumps(MelConfig(f_max=7600.0).to_dict()))
    np.save(tmp_path / "ok.npy", np.zeros((80, 20), dtype=np.float32))
    assert audio_cli.main(["vocode", vocoder_dir, tmp_path / "ok.npy", "-o", out, "--mel-config", other]) == 2
    assert "f_max" in one_line_error(capsys)

    assert audio_cli.main(["vocode", tmp_path / "no-model", tmp_path / "ok.npy", "-o", out]) == 2
    one_line_error(capsys)
    assert not out.exists()


def test_debug_shows_the_traceback(vocoder_dir, tmp_path):
    np.save(tmp_path / "nan.npy", np.full((80, 20), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        audio_cli.main(["vocode", vocoder_dir, tmp_path / "nan.npy", "-o", tmp_path / "o.wav", "--debug"])


def test_export_refuses_missing_foreign_and_wrong_kind_checkpoints(tmp_path, capsys):
    assert text_cli.main(["export", tmp_path / "missing.ckpt", tmp_path / "m"]) == 2
    assert "missing.ckpt" in one_line_error(capsys)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    assert audio_cli.main(["export", tmp_path / "foreign.ckpt", tmp_path / "m"]) == 2
    assert CHECKPOINT_KEY in one_line_error(capsys)
    torch.save({CHECKPOINT_KEY: {"module_class": "audiodiff.vocoder.module:VocoderModule"}}, tmp_path / "voc.ckpt")
    assert text_cli.main(["export", tmp_path / "voc.ckpt", tmp_path / "m"]) == 2
    assert "VocoderModule checkpoint, not a TextModule" in one_line_error(capsys)
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00" * 64)
    assert audio_cli.main(["t2s-export", tmp_path / "garbage.ckpt", tmp_path / "m"]) == 2
    assert "garbage.ckpt" in one_line_error(capsys)
    assert not (tmp_path / "m").exists()


def test_text_and_core_commands_follow_the_same_policy(tmp_path, capsys):
    assert text_cli.main(["sample", "--model", tmp_path / "nowhere", "--n", "1"]) == 2
    one_line_error(capsys)
    assert core_cli.main(["data", "build"]) == 2
    assert "name the data set" in one_line_error(capsys)
    assert core_cli.main(["data", "verify", "text", "--size", "tiny", "--root", tmp_path]) == 2
    assert "not a built data set" in one_line_error(capsys)
