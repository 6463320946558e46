"""Text-to-sound evaluation: caption adherence (real clips as generations reach exactly the ceiling; chance
stays below it), the Frechet distance (against an independent scipy computation), and the whole
``t2s-evaluate`` command on a tiny rendered sounds folder with a tiny random pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiodiff.data import procedural
from audiodiff.t2s import AudioPipeline, ByteTextEncoder, MelVAE, UNetDenoiser
from audiodiff.t2s.cli import main
from audiodiff.t2s.evaluate import (
    ATTRIBUTES,
    adherence_report,
    confusion,
    expected_chance,
    frechet_distance,
    octave_shift,
    paired_word_test,
    pitch_pairs,
    shuffled_within_kind,
    swap_pitch_word,
    wilson_interval,
)

SR = 22050


def rendered(n: int, seed: int = 0, held_out: bool = True) -> tuple[list[np.ndarray], list[dict]]:
    """Procedural clips for n distinct (held-out) attribute combinations, with their rows."""
    rng = np.random.default_rng(seed)
    combos = procedural.iter_categories(held_out_only=held_out)
    waves, rows = [], []
    for i in rng.choice(len(combos), n, replace=False):
        spec = procedural.make_event_spec(rng, **combos[i])
        waves.append(procedural.render_events(spec, SR, 3.0))
        rows.append({"kind": "procedural", "caption": procedural.caption_events(spec, rng),
                     "held_out": int(held_out), **spec.to_labels()})
    return waves, rows


def test_real_clips_as_generations_reach_the_ceiling_and_chance_stays_below():
    waves, rows = rendered(10)
    report = adherence_report(waves, waves, rows, SR, seed=0)
    assert report["generated"] == report["ceiling"]
    assert all(v == pytest.approx(1.0) for v in report["of_ceiling"].values() if np.isfinite(v))
    assert report["beats_chance"]["pitch"] and report["beats_chance"]["timbre"]
    assert report["ceiling"]["all_correct"] >= 0.9  # the generators' labels are measurable from the audio
    assert report["chance"]["all_correct"] < report["ceiling"]["all_correct"]
    assert set(ATTRIBUTES["procedural"]) <= set(report["chance"])
    assert np.mean([report["chance"][k] for k in ATTRIBUTES["procedural"]]) < \
        np.mean([report["ceiling"][k] for k in ATTRIBUTES["procedural"]])


def test_generated_clips_are_measured_once_for_their_captions_and_chance(monkeypatch):
    import audiodiff.t2s.evaluate as ev

    waves, rows = rendered(6)
    calls = []
    real_measure = ev.measure
    monkeypatch.setattr(ev, "measure", lambda w, *a, **k: calls.append(1) or real_measure(w, *a, **k))
    report = adherence_report(waves, waves, rows, SR, seed=0)
    assert len(calls) == 12  # 6 generated (scored twice: own and shuffled captions) + 6 ceiling clips
    monkeypatch.setattr(ev, "measure", real_measure)
    fresh = ev.score_clips(waves, rows, SR, caption_rows=shuffled_within_kind(rows, 0))
    assert fresh == report["chance"]  # the cached measurements score the shuffled captions as fresh ones do


def test_evaluation_without_the_plain_ceiling_records_its_timings(tmp_path):
    from audiodiff.t2s.evaluate import run_evaluation

    data = write_sounds_folder(tmp_path / "sounds")
    result = run_evaluation(str(tiny_pipeline_dir(tmp_path / "pipe")), str(data), out=tmp_path / "eval", n=2,
                            kinds=("procedural",), classifier_epochs=1, seconds=0.5, pairs=0, without_vae=False)
    assert "ceiling_without_vae" not in result["adherence"] and result["adherence"]["ceiling"]["n"] == 2
    parts = {"load", "generate", "ceiling", "ceiling_without_vae", "score", "paired", "seen", "classifier", "frechet"}
    assert set(result["timings"]) == parts and all(v >= 0 for v in result["timings"].values())
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["timings"] == result["timings"]


def test_seen_combinations_are_scored_apart_from_the_held_out_ones(tmp_path, monkeypatch):
    """``seen``: test captions of combinations seen in training, generated and scored with their own ceiling."""
    import audiodiff.t2s.evaluate as ev

    data = write_sounds_folder(tmp_path / "sounds")
    asked = []
    real_generate = ev.generate_for
    monkeypatch.setattr(ev, "generate_for", lambda pipe, rows, **k: asked.append(list(rows)) or real_generate(
        pipe, rows, **k))
    result = ev.run_evaluation(str(tiny_pipeline_dir(tmp_path / "pipe")), str(data), out=tmp_path / "eval", n=2,
                               kinds=("procedural",), classifier_epochs=1, seconds=0.5, pairs=0, without_vae=False,
                               seen=3)
    seen = result["adherence_seen"]
    assert seen["generated"]["n"] == 3 and seen["ceiling"]["n"] == 3 and "beats_chance" in seen
    assert [bool(r["held_out"]) for r in asked[0]] == [True] * 2
    assert [bool(r["held_out"]) for r in asked[1]] == [False] * 3
    assert result["summary"]["seen"]["of_ceiling"] == seen["of_ceiling"]
    without = ev.run_evaluation(str(tmp_path / "pipe"), str(data), out=tmp_path / "eval2", n=2, kinds=("procedural",),
                                classifier=str(tmp_path / "eval" / "classifier"), seconds=0.5, pairs=0,
                                without_vae=False)
    assert without["adherence_seen"] is None and "seen" not in without["summary"]


def test_shuffle_moves_every_caption_within_its_kind():
    rows = [{"kind": k, "id": i} for i, k in enumerate(["procedural"] * 5 + ["midi"] * 3)]
    for seed in range(5):
        out = shuffled_within_kind(rows, seed)
        assert sorted(r["id"] for r in out) == list(range(8))
        assert all(a["kind"] == b["kind"] and a["id"] != b["id"] for a, b in zip(rows, out))


def test_frechet_distance_matches_scipy_and_its_identities():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = 0.7 * rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * scipy_linalg.sqrtm(sa @ sb).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-8
    shift = np.arange(6.0)
    assert frechet_distance(a, a + shift) == pytest.approx((shift**2).sum(), rel=1e-8)


def write_sounds_folder(root: Path) -> Path:
    """A miniature sounds set: procedural clips; held-out combinations only in test, beside a few seen ones."""
    parts = {"train": rendered(6, 1, held_out=False), "validation": rendered(4, 2, held_out=False),
             "test": tuple(a + b for a, b in zip(rendered(6, 3), rendered(3, 4, held_out=False)))}
    cols = ["file_name", "kind", "held_out", "caption", *ATTRIBUTES["procedural"]]
    for split, (waves, rows) in parts.items():
        (root / split).mkdir(parents=True)
        lines = [",".join(cols)]
        for i, (w, r) in enumerate(zip(waves, rows)):
            sf.write(root / split / f"c{i}.wav", w, SR, subtype="PCM_16")
            lines.append(",".join([f"c{i}.wav", "procedural", str(r["held_out"]), '"' + r["caption"] + '"',
                                   *(str(r[k]) for k in ATTRIBUTES["procedural"])]))
        (root / split / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def tiny_pipeline_dir(path: Path) -> Path:
    torch.manual_seed(0)
    vae = MelVAE(latent_channels=2, channels=(4, 4, 8), groups=2)
    mels = [(-5 + 2 * torch.randn(2, 80, 16), None)]
    vae.fit_input_statistics(mels)
    vae.fit_latent_statistics(mels)
    net = UNetDenoiser(in_channels=2, channels=(8, 8), attention_levels=(1,), heads=2, emb_dim=16, groups=2,
                       text_vocab_size=ByteTextEncoder.vocab_size, text_encoder_dim=8, text_encoder_depth=1)
    return AudioPipeline(vae, net, ByteTextEncoder(), steps=2, guidance=2.0, griffin_lim_iters=2).save_pretrained(path)


def test_evaluate_command_end_to_end(tmp_path):
    data = write_sounds_folder(tmp_path / "sounds")
    model = tiny_pipeline_dir(tmp_path / "pipe")
    assert main(["t2s-evaluate", str(model), "--data", str(data), "--out", str(tmp_path / "eval"), "--n", "2",
                 "--kinds", "procedural", "--classifier-epochs", "1", "--seconds", "0.5", "--sweep",
                 "--sweep-scales", "1", "3", "--sweep-steps", "1", "--save-best"]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    adherence = result["adherence"]
    assert adherence["generated"]["n"] == adherence["ceiling"]["n"] == 2
    assert result["frechet"]["real_vs_real_floor"] >= 0 and np.isfinite(result["frechet"]["generated_vs_real"])
    assert [(r["guidance"], r["steps"]) for r in result["sweep"]] == [(1.0, 2), (3.0, 2), (2.0, 1)]
    assert result["best_guidance"] in (1.0, 3.0)
    assert AudioPipeline.from_pretrained(model).guidance == result["best_guidance"]  # --save-best
    assert (tmp_path / "eval" / "classifier" / "config.json").is_file()
    assert (tmp_path / "eval" / "gen_00.wav").is_file()
    ceiling = adherence["ceiling"]
    assert set(adherence) >= {"ceiling_without_vae", "beats_chance", "of_ceiling", "stats"}
    assert all(lo <= ceiling[k] <= hi for k, (lo, hi) in adherence["stats"]["ceiling"]["interval"].items())
    assert all(isinstance(v, float) for k, v in ceiling.items() if k not in ("n", "all_correct_by_kind"))


def test_frechet_distance_needs_two_clips_a_side():
    with pytest.raises(ValueError, match="at least 2 clips"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))


def test_wilson_interval_known_values_and_properties():
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))  # the textbook example
    assert wilson_interval(0, 20)[0] == 0.0 and 0.1 < wilson_interval(0, 20)[1] < 0.2
    assert wilson_interval(5, 10) == pytest.approx((1 - wilson_interval(5, 10)[1], 1 - wilson_interval(5, 10)[0]))
    w24, w96 = wilson_interval(12, 24), wilson_interval(48, 96)
    assert w96[1] - w96[0] < 0.6 * (w24[1] - w24[0])  # 4x the rows: about half the width


def test_confusion_counts_each_target_measured_pair():
    pairs = [("1", "1"), ("1", "2"), ("3", "None"), ("1", "2")]
    assert confusion(pairs) == {"1": {"1": 1, "2": 2}, "3": {"None": 1}}
    assert sum(sum(r.values()) for r in confusion(pairs).values()) == len(pairs)


def test_expected_chance_is_the_independence_baseline():
    assert expected_chance([("a", "a"), ("b", "b")]) == pytest.approx(0.5)  # 1/2 * 1/2 + 1/2 * 1/2
    assert expected_chance([("a", "a"), ("a", "a"), ("b", "a")]) == pytest.approx(2 / 3)  # always answers "a"
    assert expected_chance([("a", "b"), ("a", "b")]) == 0.0


def test_pitch_word_swaps():
    assert swap_pitch_word("three short high beeps", "procedural", "low") == "three short low beeps"
    assert swap_pitch_word("a tone at a low pitch, fading", "procedural") == "a tone at a high pitch, fading"
    assert swap_pitch_word("a deep low-pitched hum", "procedural") is None  # two pitch words: ambiguous
    assert swap_pitch_word("a violin in its low register", "midi") == "a violin in its high register"
    assert swap_pitch_word("a medium-pitched beep", "procedural") is None
    rows = [{"kind": "procedural", "pitch": "high", "caption": "a shrill beep"},
            {"kind": "procedural", "pitch": "medium", "caption": "a mid-range beep"},
            {"kind": "midi", "register": "low", "caption": "a deep cello note"}]
    assert [(p["low"], p["high"]) for p in pitch_pairs(rows)] == [("a deep beep", "a shrill beep"),
                                                                 ("a deep cello note", "a upper cello note")]


class _TonePipe:
    """Renders a tone whose pitch follows the caption's pitch word (or ignores it), like a pipeline."""

    sample_rate = SR

    def __init__(self, follows: bool):
        self.follows = follows

    def __call__(self, captions, seconds, steps=None, guidance=None, seed=0):
        t = np.arange(int(seconds * SR)) / SR
        env = np.minimum(1, 50 * t) * np.minimum(1, 50 * (seconds - 0.5 - t)).clip(0)
        waves = []
        for i, c in enumerate(captions):
            high = any(w in c.split() for w in ("high", "shrill", "upper"))
            f = (2000.0 if high else 220.0) if self.follows else 220.0 * (1 + 0.1 * ((seed + i) % 3))
            waves.append(torch.tensor(0.3 * np.sin(2 * np.pi * f * t) * env, dtype=torch.float32))

        class Out:
            audio = waves
        return Out()


def test_paired_word_test_counts_moves_the_right_way():
    pairs = [{"kind": "procedural", "low": f"{n} low beeps", "high": f"{n} high beeps"} for n in range(6)]
    good = paired_word_test(_TonePipe(True), pairs, seconds=1.0, batch_size=4)["pitch"]
    assert good["right_way"] == 1.0 and good["n"] == 6 and good["interval"][0] > 0.5
    shift = good["octaves"]  # 220 -> 2000 Hz in every pair
    assert shift["measured"] == 6 and shift["mean"] == pytest.approx(math.log2(2000 / 220), abs=0.05)
    assert shift["interval"][0] <= shift["mean"] <= shift["interval"][1]
    deaf = paired_word_test(_TonePipe(False), pairs, seconds=1.0, batch_size=4)["pitch"]
    assert deaf["right_way"] == 0.0  # the same seed gives the same clip: pitch does not move
    assert deaf["octaves"]["mean"] == pytest.approx(0.0, abs=0.02)


def test_octave_shift_summarises_per_pair_shifts():
    s = octave_shift([1.0, 2.0, 3.0, -0.5])
    assert s["mean"] == pytest.approx(1.375) and s["median"] == pytest.approx(1.5) and s["measured"] == 4
    lo, hi = s["interval"]
    assert -0.5 <= lo < 1.375 < hi <= 3.0 and octave_shift([1.0, 2.0, 3.0, -0.5]) == s  # seeded
    assert octave_shift([]) == {"mean": None, "median": None, "interval": [None, None], "measured": 0}
