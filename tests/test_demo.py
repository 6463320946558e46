"""`diffcore demo --smoke` end to end (the README's main job at a reduced size), its resumability, and the
report page in headless Chromium.

The smoke run trains every model for a dozen steps, so its figures say nothing about quality; what is
checked is that every number the report shows exists and lies where it must (finite, accuracies in [0, 1],
the ground truth at the metrics' best values and ahead of Griffin-Lim, perplexities above 1), that a
second run reuses every stage, and that an interrupted training stage resumes from its checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from diffcore.cli import main
from diffcore.lightning import AtomicCheckpointIO
from diffjob import DemoError
from diffjob.demo import run_demo

STAGES = ("data", "vocoder", "vae", "t2s_cache", "t2s", "t2s_high", "t2s_experts", "t2s_classifier", "text_tokens",
          "lm", "lm_block", "lm_ar", "eval_vocoder", "eval_t2s", "eval_text")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tiny_data_root, speech_tiny, sounds_tiny):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--smoke", "--out", out, "--data-root", tiny_data_root, "--no-progress",
                 "--jobs", "2", "--threads", "1"]) == 0  # two stages at a time, each in its own process
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_smoke_report_numbers_are_sane(smoke):
    res = json.loads((smoke / "results.json").read_text())
    assert set(res["stage_seconds"]) == set(STAGES)
    for stage in STAGES:
        assert json.loads((smoke / stage / "done.json").read_text())["fingerprint"]
    # the Frechet classifier is trained once, by its own stage beside the training stages, and eval_t2s uses it
    assert (smoke / "t2s_classifier" / "classifier" / "config.json").is_file()
    assert not (smoke / "eval_t2s" / "classifier").exists()

    rows = {(r["system"], r["steps"]): r for r in res["vocoder"]["eval"]["rows"]}
    truth, gl = rows[("ground_truth", None)], rows[("griffin_lim", None)]
    assert {("vocoder", 6), ("vocoder", 50)} <= set(rows)
    for r in rows.values():
        for m in ("logmel", "mrstft", "pesq_wb", "stoi"):
            assert _finite(r[f"{m}_mean"]), (r["system"], m)
        assert 0 <= r["stoi_mean"] <= 1 + 1e-6 and 1.0 <= r["pesq_wb_mean"] <= 4.65
    assert truth["logmel_mean"] == 0 and truth["stoi_mean"] == pytest.approx(1.0)
    assert truth["pesq_wb_mean"] > gl["pesq_wb_mean"] and gl["logmel_mean"] > 0
    backend = res["t2s"]["audio_backend"]
    assert backend["name"] == ("vocoder" if backend["vocoder_logmel"] < backend["griffin_lim_logmel"]
                               else "griffin_lim")

    # the evaluated pipeline joins the two latent stages' nets: the expert above the boundary
    from audiodiff.t2s import AudioPipeline, TimeSplitDenoiser

    pipe = AudioPipeline.from_pretrained(res["t2s"]["experts"]["model"])
    assert isinstance(pipe.denoiser, TimeSplitDenoiser) and pipe.denoiser.boundary == res["t2s"]["experts"]["boundary"]
    assert res["t2s"]["high"]["steps"] == res["profile"]["ldm_high_steps"]
    # both trained on copies of the caches the t2s_cache stage built once
    for stage in ("t2s", "t2s_high"):
        assert (smoke / stage / "latents-train.safetensors").stat().st_size == (
            smoke / "t2s_cache" / "latents-train.safetensors").stat().st_size
    ev = res["t2s"]["eval"]
    for who in ("generated", "ceiling", "chance"):
        scores = ev["adherence"][who]
        assert scores["n"] == ev["n"] >= 2
        for k, v in scores.items():
            if k not in ("n", "all_correct_by_kind") and v is not None:
                assert 0.0 <= v <= 1.0, (who, k, v)
    fd = ev["frechet"]
    assert _finite(fd["generated_vs_real"]) and fd["generated_vs_real"] >= -1e-6
    assert _finite(fd["resynthesized_real_vs_real"]) and _finite(ev["vae_logmel_l1"])

    text = res["text"]["eval"]
    ppl = text["perplexity"]
    assert ppl["diffusion"]["ppl"] > 1 and ppl["ar"]["ppl"] > 1 and _finite(ppl["gap_percent"])
    assert _finite(ppl["gap_percent_char"]) and res["text"]["tokens"]["vocab_size"] > 257  # a byte-level BPE
    for k in ("diffusion", "ar", "unigram"):
        assert math.isclose(ppl[k]["bits_per_char"], ppl[k]["nats_per_char"] / math.log(2), rel_tol=1e-9)
    assert all(_finite(r["gen_ppl"]) and r["gen_ppl"] > 1 for r in text["samples_quality"])
    block = text["block"]  # the block-diffusion LM: its own bound on the same windows, and its samples
    assert block["block_size"] >= 1 and block["perplexity"]["diffusion"]["ppl"] > 1
    assert block["perplexity"]["diffusion"]["tokens"] == ppl["diffusion"]["tokens"]
    assert block["perplexity"]["ar"] == ppl["ar"]
    assert [r["steps"] for r in block["samples_quality"]] == list(res["profile"]["text_block_steps"])
    assert any(k.startswith("block diffusion") for k in text["samples"])
    assert all(isinstance(s, str) for s in text["samples"].values()) and len(text["infill"]["outputs"]) == 2
    # the template's fixed words survive infilling
    assert all(o.startswith("ROMEO:\nBut soft, what") and " through yonder" in o and o.endswith(" breaks?")
               for o in text["infill"]["outputs"])

    for name in ("vocoder", "vae", "t2s", "t2s_high", "lm", "lm_block", "lm_ar"):
        curve = res["curves"][name]
        train = next(v for k, v in curve.items() if k.startswith("train"))
        assert len(train) >= 2 and all(_finite(v) for _, v in train), name
    page = (smoke / "report" / "index.html").read_text()
    assert "<audio" in page and "<svg" in page and "Griffin-Lim" in page and "held-out" in page
    assert "block diffusion, blocks of" in page
    # every generated clip is counted once in each attribute's confusion table, under its caption's label
    gen = ev["adherence"]["stats"]["generated"]
    assert sum(sum(r.values()) for r in gen["confusion"]["count"].values()) == gen["counts"]["count"][1]
    assert "count: caption ↓, measured →" in page


def test_second_run_reuses_every_stage(smoke, tiny_data_root):
    said: list[str] = []
    before = json.loads((smoke / "results.json").read_text())
    res = run_demo(smoke, profile="smoke", data_root=tiny_data_root, progress=False, threads=1, jobs=1,
                   say=said.append)
    reused = [line for line in said if line.endswith("reused; --fresh redoes it")]
    assert len(reused) == len(STAGES), said
    assert res["text"]["eval"]["perplexity"] == before["text"]["eval"]["perplexity"]


def test_interrupted_training_resumes_from_its_checkpoint(smoke, tiny_data_root):
    """Recreate what a kill during the AR twin's training leaves: a periodic checkpoint, no final checkpoint,
    no export, no done.json. The rerun resumes that stage, redoes only what depends on it, keeps the others."""
    d = smoke / "lm_ar"
    assert not (d / "checkpoints").exists()  # a finished stage keeps only final.ckpt
    (d / "checkpoints").mkdir()
    (d / "final.ckpt").rename(d / "checkpoints" / "last.ckpt")
    step_at_kill = torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    (d / "done.json").unlink()
    shutil.rmtree(d / "model")
    said: list[str] = []
    run_demo(smoke, profile="smoke", data_root=tiny_data_root, progress=False, threads=1, jobs=2, say=said.append)
    assert "[lm_ar] resuming" in said
    assert "[eval_text] starting" in said  # downstream of lm_ar
    assert "[lm] done earlier" in " ".join(said) and "[vocoder] done earlier" in " ".join(said)
    final = torch.load(d / "final.ckpt", map_location="cpu", weights_only=False)
    assert 0 < step_at_kill == final["global_step"]
    # a restart from scratch would have logged training losses again from step 0 in a second log part
    again = d / "logs" / "part1" / "metrics.csv"
    rows = list(csv.DictReader(again.open())) if again.is_file() else []
    assert all(int(r["step"]) >= step_at_kill for r in rows if r.get("train/loss"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_a_trained_vocoder_replaces_the_tiny_one_without_being_touched(smoke, tiny_data_root, tmp_path):
    """``--vocoder DIR``: the vocoder stage copies DIR instead of training, and only what depends on the
    vocoder is redone; DIR itself is never written to."""
    source = tmp_path / "my-vocoder"
    shutil.copytree(smoke / "vocoder" / "model", source)  # stands in for a GPU-trained one
    before = _tree_bytes(source)
    out = tmp_path / "run"
    shutil.copytree(smoke, out)
    said: list[str] = []
    res = run_demo(out, profile="smoke", data_root=tiny_data_root, progress=False, threads=1, jobs=1,
                   vocoder=source, say=said.append)
    for stage in ("vocoder", "eval_vocoder", "eval_t2s"):
        assert f"[{stage}] starting" in said, said
    for stage in ("data", "vae", "t2s_cache", "t2s", "t2s_high", "t2s_experts", "t2s_classifier", "lm", "lm_block",
                  "lm_ar", "eval_text"):
        assert any(line.startswith(f"[{stage}] done earlier") for line in said), stage
    voc = res["vocoder"]
    assert voc["source"] == str(source.resolve()) and voc["steps"] is None
    assert voc["search"] is None  # the folder had a 6-step schedule already
    assert Path(voc["model"]) == out / "vocoder" / "model" and _tree_bytes(Path(voc["model"])) == before
    assert not (out / "vocoder" / "logs").exists() and res["curves"]["vocoder"] == {}
    assert _tree_bytes(source) == before
    assert "--vocoder" in (out / "report" / "index.html").read_text()

    said.clear()
    run_demo(out, profile="smoke", data_root=tiny_data_root, progress=False, threads=1, jobs=1, vocoder=source,
             say=said.append)
    assert sum(line.endswith("reused; --fresh redoes it") for line in said) == len(STAGES)


def test_a_vocoder_that_does_not_fit_is_refused_before_anything_runs(smoke, tmp_path):
    from audiodiff.mel import MelConfig
    from audiodiff.vocoder import Vocoder

    voc = Vocoder.from_pretrained(smoke / "vocoder" / "model")
    Vocoder(voc.net, voc.schedule, MelConfig(f_max=7600.0)).save_pretrained(tmp_path / "other-mel")
    out = tmp_path / "run"
    with pytest.raises(DemoError, match="f_max"):
        run_demo(out, profile="smoke", progress=False, vocoder=tmp_path / "other-mel")
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(DemoError, match="not a vocoder folder"):
        run_demo(out, profile="smoke", progress=False, vocoder=tmp_path / "not-a-model")
    assert main(["demo", "--smoke", "--out", out, "--no-progress", "--vocoder", tmp_path / "nowhere"]) == 2
    assert not out.exists()  # checked before anything was written


def test_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "vocoder").mkdir()
    (tmp_path / "vocoder" / "precious.txt").write_text("mine")
    with pytest.raises(DemoError, match="not made by `diffcore demo`"):
        run_demo(tmp_path, profile="smoke", progress=False)
    assert (tmp_path / "vocoder" / "precious.txt").read_text() == "mine"
    assert main(["demo", "--smoke", "--out", tmp_path, "--no-progress"]) == 2


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_atomic_checkpoint_keeps_the_old_file_when_a_save_fails(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": _Unpicklable()}, path)
    assert io.load_checkpoint(path)["step"] == 1
    assert os.listdir(path.parent) == ["last.ckpt"]  # no partial file left behind
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3


# --- the page in a real browser ------------------------------------------------------------------------------

AUDIO_CHECK = """
const done = arguments[arguments.length - 1];
const audios = Array.from(document.querySelectorAll('audio'));
Promise.all(audios.map(a => new Promise(resolve => {
  const report = () => resolve({src: a.getAttribute('src'), duration: a.duration,
                                error: a.error ? a.error.code : null});
  if (a.readyState >= 1 || a.error) return report();
  a.addEventListener('loadedmetadata', report, {once: true});
  a.addEventListener('error', report, {once: true});
  a.preload = 'auto'; a.load();
}))).then(done);
"""
IMAGE_CHECK = """
return Array.from(document.images).map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
"""


@pytest.fixture(scope="module")
def chromium():
    """Selenium driving the Debian chromium through chromedriver (no download: both are local programs)."""
    missing = [p for p in ("chromium", "chromedriver") if shutil.which(p) is None]
    if missing:
        msg = ("Chromium is not installed (" + ", ".join(missing) + "); fix: diffcore data system-deps --install "
               "--browser (apt-get install chromium chromium-driver)")
        if os.environ.get("DIFFCORE_REQUIRE_SYSTEM") == "1":
            pytest.fail(f"DIFFCORE_REQUIRE_SYSTEM=1 but: {msg}")
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.browser
def test_report_page_in_headless_chromium(smoke, chromium):
    page = smoke / "report" / "index.html"
    chromium.get(page.as_uri())
    assert "demo report" in chromium.title
    audios = chromium.execute_async_script(AUDIO_CHECK)
    assert len(audios) >= 6  # speech (4 systems x utterances) and the generated sounds
    for a in audios:
        assert (page.parent / a["src"]).is_file(), a
        assert a["error"] is None and a["duration"] > 0, a  # the browser decoded the WAV's header
    images = chromium.execute_script(IMAGE_CHECK)
    assert len(images) == len(audios)  # one mel image per clip
    assert all(i["ok"] for i in images), [i for i in images if not i["ok"]]
    # the loss curves are inline SVG with a line (or a point) per logged loss
    assert chromium.execute_script("return document.querySelectorAll('svg polyline, svg circle').length") >= 5


def test_report_page_flags_a_missing_file(smoke, chromium, tmp_path):
    """The browser check above can fail: the same page with one WAV removed reports a decoding error."""
    copy = tmp_path / "report"
    shutil.copytree(smoke / "report", copy)
    victim = sorted((copy / "media").glob("*.wav"))[0]
    victim.unlink()
    chromium.get((copy / "index.html").as_uri())
    audios = chromium.execute_async_script(AUDIO_CHECK)
    broken = [a for a in audios if a["error"] is not None]
    assert [a["src"] for a in broken] == [f"media/{victim.name}"]


def test_recipes_folder_must_exist(tmp_path):
    with pytest.raises(DemoError, match="recipe .* not found"):
        run_demo(tmp_path / "out", profile="smoke", recipes=tmp_path / "nowhere", progress=False,
                 data_root=Path(tmp_path / "data"))


def test_text_recipes_are_sized_for_the_demo_tokenizer():
    # the demo passes the tokens' vocabulary to the nets, but a user running a recipe by hand on
    # `textdiff tokenize --tokenizer <TEXT_TOKENIZER>` output gets the recipe's own size
    import yaml

    from diffjob import demo

    ids = int(demo.TEXT_TOKENIZER.removeprefix("bpe:"))
    for stage in (s for s in demo.STAGES if s.name.startswith("lm")):
        (recipe,) = stage.recipes
        config = yaml.safe_load((demo.default_recipes() / recipe).read_text())
        assert config["model"]["init_args"]["net"]["init_args"]["vocab_size"] == config["data"]["vocab_size"] == ids
