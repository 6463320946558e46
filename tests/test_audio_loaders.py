"""Loading audio with captions: built-in sets, users' audio folders and Hugging Face data sets, one code path."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
import torch

from audiodiff.audio import normalize_peak, read_audio, resample, trim_silence, write_wav
from audiodiff.data.audiofolder import AudioFolderWriter
from audiodiff.data.loaders import AudioClips, AudioStream, resolve_source
from diffcore.data import DataError

SR = 22050


def _tone(f=440.0, seconds=0.5, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def _folder(root, rows, split="train", header=("file_name", "caption")):
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return d


def test_writer_output_reads_back_exactly(tmp_path):
    w = AudioFolderWriter(tmp_path)
    w.add("train", "b", _tone(220), caption="a low tone", count=1)
    w.add("train", "a", _tone(880), caption="a high tone", count=2)
    w.add("test", "c", _tone(440), caption="a tone")
    assert w.finish() == {"test": {"clips": 1, "seconds": 0.5}, "train": {"clips": 2, "seconds": 1.0}}
    with pytest.raises(ValueError, match="unique"):
        w.add("test", "a", _tone(), caption="dup")
    clips = AudioClips(tmp_path, "train")
    assert len(clips) == 2 and clips.text_column == "caption"
    item = clips[0]  # rows are sorted by file name
    assert item["file_name"] == "a.wav" and item["text"] == "a high tone" and item["count"] == 2
    assert item["audio"].dtype == torch.float32 and item["audio"].shape == (SR // 2,)
    assert torch.allclose(item["audio"], torch.from_numpy(_tone(880)), atol=1 / 32768)


def test_builtin_set_by_name(speech_tiny, monkeypatch):
    monkeypatch.setenv("DIFFCORE_DATA_HOME", str(speech_tiny.parent))
    clips = AudioClips("speech-tiny", "test")
    assert clips.text_column == "text" and len(clips) > 0
    item = clips[0]
    assert item["speaker"] and item["text"] is not None and item["audio"].abs().max() > 0.5
    with pytest.raises(DataError, match="diffcore data build sounds --size small"):
        AudioClips("sounds-small")


def test_user_folder_single_split_and_wrong_rate(tmp_path):
    d = _folder(tmp_path, [("x.wav", "a tone"), ("y.flac", "another")], split=".")
    write_wav(d / "x.wav", _tone())
    sf.write(d / "y.flac", _tone(seconds=0.25, sr=16000), 16000)
    with pytest.raises(DataError, match=r"y.flac has sample rate 16000 Hz but 22050 Hz.*resample=True"):
        AudioClips(tmp_path)
    clips = AudioClips(tmp_path, resample=True)
    assert abs(clips[1]["audio"].shape[0] - SR / 4) <= 1
    with pytest.warns(UserWarning, match="skipped 1 bad audio file"):
        clips = AudioClips(tmp_path, skip_bad=True)
    assert len(clips) == 1 and len(clips.skipped) == 1 and "y.flac" in clips.skipped[0][0]


@pytest.mark.parametrize("problem", ["missing", "empty", "garbage"])
def test_bad_files_name_the_file_and_fix(tmp_path, problem):
    d = _folder(tmp_path, [("good.wav", "ok"), ("bad.wav", "bad")])
    write_wav(d / "good.wav", _tone())
    if problem == "empty":
        sf.write(d / "bad.wav", np.zeros(0, np.float32), SR)
    elif problem == "garbage":
        (d / "bad.wav").write_bytes(b"this is not audio at all" * 10)
    want = {"missing": "does not exist", "empty": "is empty", "garbage": "cannot read audio file"}[problem]
    with pytest.raises(DataError, match=rf"bad.wav.*{want}.*skip_bad=True|{want}.*bad.wav"):
        AudioClips(tmp_path, "train")
    with pytest.warns(UserWarning):
        assert len(AudioClips(tmp_path, "train", skip_bad=True)) == 1


def test_missing_columns_and_bad_metadata(tmp_path):
    d = _folder(tmp_path, [("a.wav", "hello")], header=("file_name", "description"))
    write_wav(d / "a.wav", _tone())
    with pytest.raises(DataError, match=r"no 'caption' column \(columns: file_name, description\).*text_column="):
        AudioClips(tmp_path, text_column="caption")
    assert AudioClips(tmp_path, text_column="description")[0]["text"] == "hello"
    assert AudioClips(tmp_path)[0]["text"] is None  # no caption/text column: audio only (e.g. vocoder data)
    _folder(tmp_path, [("a.wav",)], header=("path",))
    with pytest.raises(DataError, match="no file_name column"):
        AudioClips(tmp_path)
    (d / "metadata.csv").write_bytes("file_name,caption\na.wav,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8.*iconv"):
        AudioClips(tmp_path)
    with pytest.raises(DataError, match="no metadata.csv for split 'test'.*splits found: train"):
        AudioClips(tmp_path, "test")
    with pytest.raises(DataError, match="neither an existing path"):
        resolve_source("no/such/folder")


def test_hugging_face_saved_and_streaming(tmp_path):
    datasets = pytest.importorskip("datasets")
    files = []
    for i, f in enumerate((220.0, 440.0, 660.0)):
        p = tmp_path / f"clip{i}.wav"
        write_wav(p, _tone(f))
        files.append(str(p))
    ds = datasets.Dataset.from_dict({"audio": files, "caption": ["low", "mid", "high"]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    clips = AudioClips(f"hf:{tmp_path / 'hf'}", "train")
    assert len(clips) == 3 and [clips[i]["text"] for i in range(3)] == ["low", "mid", "high"]
    assert torch.allclose(clips[1]["audio"], torch.from_numpy(_tone(440.0)), atol=1 / 32768)
    streamed = list(AudioStream(tmp_path / "hf", "train"))
    assert [s["text"] for s in streamed] == ["low", "mid", "high"]
    assert torch.equal(streamed[2]["audio"], clips[2]["audio"])
    with pytest.raises(DataError, match="no 'label' column"):
        AudioClips(tmp_path / "hf", "train", text_column="label")
    with pytest.raises(DataError, match="has splits train, not 'test'"):
        AudioClips(tmp_path / "hf", "test")


def test_audio_helpers(tmp_path):
    with pytest.raises(ValueError, match="would clip"):
        write_wav(tmp_path / "x.wav", _tone() * 3)
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "x.wav", np.full(10, np.nan, np.float32))
    x = np.concatenate([np.zeros(SR), _tone(seconds=1.0), np.zeros(SR)]).astype(np.float32)
    y = trim_silence(x, SR, pad=0.1)
    assert abs(len(y) / SR - 1.2) < 0.05
    assert np.abs(normalize_peak(x, 0.9)).max() == pytest.approx(0.9, abs=1e-6)
    r = resample(_tone(440.0, 1.0, 44100), 44100, SR)
    assert r.shape == (SR,) and np.argmax(np.abs(np.fft.rfft(r))) == 440
    stereo = np.stack([_tone(), -_tone()], axis=1)
    sf.write(tmp_path / "st.wav", stereo, SR)
    mono, sr = read_audio(tmp_path / "st.wav")
    assert sr == SR and np.abs(mono).max() < 1e-4  # channels averaged


def test_hub_name_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(DataError, match="could not load the Hugging Face data set 'nobody/no-such-set'.*local path"):
        AudioClips("hf:nobody/no-such-set", "train")
