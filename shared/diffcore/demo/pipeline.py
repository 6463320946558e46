"""The stages of ``diffcore demo`` and the bookkeeping that makes the job resumable.

A stage is a function of its output folder. Before running it, ``Stages.run`` computes a fingerprint of
its settings and of its upstream stages' run ids; a finished stage (``done.json``) with the same
fingerprint is reused, anything else in the folder is stale and removed. Training stages resume from
their last checkpoint (written atomically by ``AtomicCheckpointIO``), so an interrupted run loses at most
one checkpoint interval.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

MARKER = ".diffcore-demo"  # marks an output folder as ours: only then do we ever delete inside it


class DemoError(RuntimeError):
    """The demo cannot run as asked (foreign output folder, missing recipes, ...); the message says the fix."""


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one demo run. ``full`` is the README's job (about 20 minutes on 2 CPU cores);
    ``smoke`` runs every code path in a few minutes (CI)."""

    name: str
    data_size: str
    vocoder_steps: int
    vae_steps: int
    ldm_steps: int
    lm_steps: int
    lm_batch_size: int
    search_utterances: int
    eval_utterances: int
    eval_seconds: float
    vocoder_eval_steps: tuple[int, ...]
    t2s_captions: int
    t2s_steps: int
    classifier_epochs: int
    text_windows: int
    text_samples: int
    text_sample_steps: tuple[int, ...]
    val_batches: int


PROFILES = {
    "full": Profile("full", "small", vocoder_steps=400, vae_steps=300, ldm_steps=300, lm_steps=300, lm_batch_size=8,
                    search_utterances=3, eval_utterances=8, eval_seconds=3.0, vocoder_eval_steps=(6, 50),
                    t2s_captions=24, t2s_steps=25, classifier_epochs=3, text_windows=64, text_samples=8,
                    text_sample_steps=(8, 32, 128), val_batches=4),
    "smoke": Profile("smoke", "tiny", vocoder_steps=12, vae_steps=12, ldm_steps=12, lm_steps=12, lm_batch_size=4,
                     search_utterances=1, eval_utterances=2, eval_seconds=1.0, vocoder_eval_steps=(6, 50),
                     t2s_captions=4, t2s_steps=4, classifier_epochs=1, text_windows=8, text_samples=2,
                     text_sample_steps=(4, 16), val_batches=1),
}


def default_recipes() -> Path:
    """``recipes/`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[3] / "recipes"


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary sibling, then rename)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


class Stages:
    """Runs named stages in ``out``, reusing finished ones whose fingerprint matches."""

    def __init__(self, out: Path, fresh: bool, say: Callable[[str], None]):
        self.out, self.fresh, self.say = out, fresh, say
        self.records: dict[str, dict[str, Any]] = {}
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise DemoError(f"{out} is not empty and was not made by `diffcore demo`; choose another --out "
                            "(the demo only ever deletes inside its own output folder)")
        (out / MARKER).write_text("made by diffcore demo; stages are reused or redone in here\n")

    def run(self, name: str, settings: dict[str, Any], upstream: Sequence[str],
            fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        d = self.out / name
        # keyed on each upstream stage's run id: when an upstream stage is redone, everything after it is too
        fp = _fingerprint({"settings": settings, "upstream": [self.records[u]["run"] for u in upstream]})
        done = d / "done.json"
        if done.is_file() and not self.fresh:
            record = json.loads(done.read_text())
            if record.get("fingerprint") == fp:
                self.say(f"[{name}] done earlier ({record['seconds']:.0f} s), reused; --fresh redoes it")
                self.records[name] = record
                return record
        started = d / "fingerprint"
        if d.exists() and (self.fresh or not started.is_file() or started.read_text() != fp):
            shutil.rmtree(d)  # stale: other settings, other upstream results, or --fresh
        resumed = d.exists()
        d.mkdir(parents=True, exist_ok=True)
        started.write_text(fp)
        self.say(f"[{name}] {'resuming' if resumed else 'starting'}")
        t0 = time.perf_counter()
        result = fn(d)
        record = {"fingerprint": fp, "run": f"{name}-{time.time_ns()}", "seconds": time.perf_counter() - t0,
                  "settings": settings, "result": result}
        _write_json(done, record)
        self.say(f"[{name}] finished in {record['seconds']:.0f} s")
        self.records[name] = record
        return record


# --------------------------------------------------------------------------------------------------
# training through LightningCLI


def _read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def train(stage: Path, make_cli: Callable[..., Any], recipes: Sequence[Path], overrides: dict[str, Any],
          max_steps: int, val_batches: int, progress: bool) -> Path:
    """Train the recipe(s) in ``stage`` for ``max_steps``, resuming from ``stage/checkpoints/last.ckpt``, and
    return ``stage/final.ckpt`` (kept for fine-tuning; the periodic checkpoints are then removed). The
    demo's own settings go in ``stage/demo.yaml``, the last config LightningCLI reads, so the folder
    records exactly what was run."""
    ckpt_dir, logs, final = stage / "checkpoints", stage / "logs", stage / "final.ckpt"
    if final.is_file():  # trained already; the run was interrupted while exporting
        return final
    part = len(list(logs.glob("part*"))) if logs.is_dir() else 0  # one CSV log per (re)start
    every = max(1, min(250, max_steps // 4))
    recipe_trainer = {}
    for r in recipes:
        recipe_trainer.update(_read_yaml(r).get("trainer") or {})
    val_every = min(int(recipe_trainer.get("val_check_interval") or every), every)
    config: dict[str, Any] = {
        "trainer": {
            "max_steps": max_steps, "default_root_dir": str(stage), "val_check_interval": val_every,
            "check_val_every_n_epoch": None, "limit_val_batches": val_batches, "num_sanity_val_steps": 0,
            "log_every_n_steps": max(1, min(10, max_steps // 10)), "enable_progress_bar": progress,
            "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(stage), "name": "logs", "version": f"part{part}"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(ckpt_dir), "save_last": True, "every_n_train_steps": every,
                                         "save_top_k": 0}}],
            "plugins": [{"class_path": "diffcore.lightning.AtomicCheckpointIO"}],
        },
        **overrides,
    }
    demo_yaml = stage / "demo.yaml"
    demo_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    args: list[str] = []
    for r in recipes:
        args += ["-c", str(r)]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI would also read the demo's own command line
    try:
        cli = make_cli([*args, "-c", str(demo_yaml)], run=False)
    finally:
        sys.argv = argv
    last = ckpt_dir / "last.ckpt"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(last) if last.is_file() else None)
    cli.trainer.save_checkpoint(final)  # through AtomicCheckpointIO
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # final.ckpt supersedes the periodic ones (half the disk)
    return final


def loss_curves(stage: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged loss of a training stage (``loss`` in the metric name), across restarts: {name: [(step, value)]}."""
    import csv

    curves: dict[str, dict[int, float]] = {}
    for part in sorted((stage / "logs").glob("part*/metrics.csv"), key=lambda p: int(p.parent.name[4:])):
        with open(part, newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if "loss" in key and value not in ("", None) and row.get("step") not in ("", None):
                        v = float(value)
                        if math.isfinite(v):
                            curves.setdefault(key, {})[int(row["step"])] = v
    return {k: sorted(v.items()) for k, v in curves.items()}


# --------------------------------------------------------------------------------------------------
# the stages


@dataclass
class Context:
    """What every stage needs: the profile, where recipes and data live, and how to talk."""

    profile: Profile
    recipes: Path
    data_root: Path | None
    seed: int
    progress: bool
    say: Callable[[str], None]

    def recipe(self, *parts: str) -> Path:
        path = self.recipes.joinpath(*parts)
        if not path.is_file():
            raise DemoError(f"recipe {path} not found; run the demo from a source checkout of the project "
                            "or pass --recipes DIR")
        return path


def stage_data(ctx: Context, d: Path, force: bool) -> dict[str, Any]:
    from .. import data

    paths = {}
    for name in ("speech", "sounds", "text"):
        ctx.say(f"[data] {name}-{ctx.profile.data_size}")
        path = data.build(name, ctx.profile.data_size, root=ctx.data_root, seed=ctx.seed, force=force,
                          progress=ctx.progress)
        m = data.load_manifest(path)
        paths[name] = {"path": str(path), "splits": m.get("splits", {}), "build_seconds": m.get("build_seconds")}
    return paths


def _trainer_recipe(ctx: Context) -> Path:
    return ctx.recipe("_base", "trainer.yaml")


def stage_vocoder(ctx: Context, d: Path, speech: str) -> dict[str, Any]:
    from audiodiff.cli import lightning_cli
    from audiodiff.vocoder import Vocoder
    from audiodiff.vocoder.module import export_checkpoint

    p = ctx.profile
    ckpt = train(d, lightning_cli, [_trainer_recipe(ctx), ctx.recipe("vocoder", "tiny.yaml")],
                 {"seed_everything": ctx.seed, "data": {"init_args": {"root": speech}}},
                 p.vocoder_steps, p.val_batches, ctx.progress)
    model = export_checkpoint(ckpt, d / "model")
    vocoder = Vocoder.from_pretrained(model)
    search = _search_six_steps(ctx, vocoder, model, speech)
    return {"model": str(model), "params": sum(x.numel() for x in vocoder.net.parameters()),
            "steps": p.vocoder_steps, "search": search}


def check_vocoder_dir(path: Path) -> str:
    """Check that ``path`` holds a saved vocoder the demo can use (it loads, and its mel front end is the
    project's default, which the demo's data and mel VAE use); returns a hash of its files' contents."""
    from audiodiff.mel import MelConfig, MelConfigMismatchError
    from audiodiff.vocoder import Vocoder

    try:
        Vocoder.from_pretrained(path, expected_mel=MelConfig(), what="the demo's data and mel VAE")
    except MelConfigMismatchError as e:
        raise DemoError(f"--vocoder {path}: {e}") from e
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DemoError(f"--vocoder {path} is not a vocoder folder written by `audiodiff export` or "
                        f"Vocoder.save_pretrained ({e})") from e
    h = hashlib.sha256()
    for f in sorted(x for x in path.rglob("*") if x.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def stage_pretrained_vocoder(ctx: Context, d: Path, source: Path, speech: str) -> dict[str, Any]:
    """Use a vocoder trained elsewhere (e.g. the GPU recipe): a copy goes into the stage folder, so the
    user's folder is never written to, and a 6-step schedule is searched for the copy if it has none."""
    from audiodiff.vocoder import Vocoder

    model = d / "model"
    if model.exists():  # a copy interrupted half-way
        shutil.rmtree(model)
    shutil.copytree(source, model)
    vocoder = Vocoder.from_pretrained(model)
    search = None
    if 6 not in vocoder.noise_schedules:
        search = _search_six_steps(ctx, vocoder, model, speech)
    return {"model": str(model), "source": str(source), "params": sum(x.numel() for x in vocoder.net.parameters()),
            "steps": None, "search": search}


def _search_six_steps(ctx: Context, vocoder: Any, model: Path, speech: str) -> dict[str, Any]:
    """Search a 6-step schedule on validation utterances and store it as the exported model's default."""
    import torch

    from audiodiff.audio import SAMPLE_RATE
    from audiodiff.data.loaders import AudioClips
    from audiodiff.vocoder.inference import update_noise_schedule
    from audiodiff.vocoder.search import search_schedule

    clips = AudioClips(speech, split="validation", sample_rate=SAMPLE_RATE, resample=True)
    n = min(ctx.profile.search_utterances, len(clips))
    audios = [torch.as_tensor(clips[i]["audio"])[: int(2.0 * SAMPLE_RATE)] for i in range(n)]
    ctx.say(f"[vocoder] searching a 6-step noise schedule on {len(audios)} validation utterance(s)")
    result = search_schedule(vocoder, audios, 6, seed=ctx.seed, rounds=1)
    update_noise_schedule(model, result.betas, make_default=True)
    return {"betas": list(result.betas), "objective": result.objective, "baselines": result.baselines}


def stage_vae(ctx: Context, d: Path, sounds: str) -> dict[str, Any]:
    from audiodiff.cli import lightning_cli
    from audiodiff.t2s.module import export_vae

    p = ctx.profile
    ckpt = train(d, lightning_cli, [_trainer_recipe(ctx), ctx.recipe("t2s", "vae_tiny.yaml")],
                 {"seed_everything": ctx.seed, "data": {"init_args": {"root": sounds}}},
                 p.vae_steps, p.val_batches, ctx.progress)
    model = export_vae(ckpt, d / "model", data=sounds, batches=4 if p.name == "smoke" else 16)
    return {"model": str(model), "steps": p.vae_steps}


def audio_backend(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The vocoder if its fewest-step row beats Griffin-Lim on log-mel L1 in the vocoder evaluation, else
    Griffin-Lim; with the two figures, so the report can say why."""
    gl = next(r for r in rows if r["system"] == "griffin_lim")
    voc = min((r for r in rows if r["system"] == "vocoder"), key=lambda r: r["steps"])
    better = voc["logmel_mean"] < gl["logmel_mean"]
    return {"name": "vocoder" if better else "griffin_lim", "vocoder_steps": voc["steps"],
            "vocoder_logmel": voc["logmel_mean"], "griffin_lim_logmel": gl["logmel_mean"]}


def stage_t2s(ctx: Context, d: Path, sounds: str, vae: str) -> dict[str, Any]:
    """Train the latent denoiser and export it as a pipeline with Griffin-Lim audio; the evaluation plugs in
    the vocoder when it measured better (``AudioPipeline.from_pretrained(dir, vocoder=...)``)."""
    from audiodiff.cli import lightning_cli
    from audiodiff.t2s.module import export_pipeline

    p = ctx.profile
    ckpt = train(d, lightning_cli, [_trainer_recipe(ctx), ctx.recipe("t2s", "ldm_tiny.yaml")],
                 {"seed_everything": ctx.seed,
                  "model": {"init_args": {"vae": vae, "cache_path": str(d / "captions.safetensors")}},
                  "data": {"init_args": {"root": sounds}}},
                 p.ldm_steps, p.val_batches, ctx.progress)
    model = export_pipeline(ckpt, d / "model", steps=p.t2s_steps)
    return {"model": str(model), "steps": p.ldm_steps}


def stage_lm(ctx: Context, d: Path, text: str, recipe: str) -> dict[str, Any]:
    from textdiff.cli import build_cli, export_checkpoint

    p = ctx.profile
    ckpt = train(d, build_cli, [_trainer_recipe(ctx), ctx.recipe("textdiff", recipe)],
                 {"seed_everything": ctx.seed, "data": {"data_dir": text, "batch_size": p.lm_batch_size}},
                 p.lm_steps, p.val_batches, ctx.progress)
    model = export_checkpoint(ckpt, d / "model", tokenizer_dir=Path(text) / "tokenizer")
    return {"model": str(model), "steps": p.lm_steps}


def eval_vocoder(ctx: Context, d: Path, model: str, speech: str) -> dict[str, Any]:
    from audiodiff.audio import SAMPLE_RATE
    from audiodiff.data.loaders import AudioClips
    from audiodiff.vocoder import Vocoder
    from audiodiff.vocoder.evaluate import evaluate, format_table

    p = ctx.profile
    vocoder = Vocoder.from_pretrained(model)
    clips = AudioClips(speech, split="test", sample_rate=SAMPLE_RATE, resample=True)
    result = evaluate(vocoder, clips, p.vocoder_eval_steps, limit=p.eval_utterances, max_seconds=p.eval_seconds,
                      seed=ctx.seed, audio_dir=d / "audio", save_audio=min(3, p.eval_utterances),
                      progress=lambda s: ctx.say(f"[eval_vocoder] {s}"))
    ctx.say("[eval_vocoder]\n" + format_table(result["rows"]))
    _write_json(d / "eval.json", result)
    return {"rows": result["rows"], "utterances": result["utterances"], "audio": str(d / "audio")}


def eval_t2s(ctx: Context, d: Path, model: str, sounds: str, vocoder: str | None) -> dict[str, Any]:
    from audiodiff.t2s.evaluate import run_evaluation

    p = ctx.profile
    result = run_evaluation(model, sounds, out=d, n=p.t2s_captions, seed=ctx.seed, steps=p.t2s_steps, vocoder=vocoder,
                            classifier_epochs=p.classifier_epochs, seconds=3.0 if p.name != "smoke" else 1.5,
                            progress=lambda s: ctx.say(f"[eval_t2s] {s}"))
    keep = ("n", "steps", "guidance", "sampler", "audio", "vae_logmel_l1", "seconds_per_clip", "adherence",
            "frechet", "classifier_validation_accuracy", "seconds")
    return {**{k: result[k] for k in keep if k in result}, "eval_dir": str(d), "vocoder": vocoder}


INFILL_TEMPLATE = "The [MASK:6] of the king [MASK:8] and the queen"


def eval_text(ctx: Context, d: Path, model: str, ar_model: str, text: str) -> dict[str, Any]:
    from textdiff import evaluate as ev
    from textdiff.inference import TextGenerator

    p = ctx.profile
    diff = TextGenerator.from_pretrained(model)
    ar = TextGenerator.from_pretrained(ar_model)
    ctx.say(f"[eval_text] perplexity on at most {p.text_windows} test windows; sample quality vs steps")
    res = ev.evaluate_pair(diff, ar, text, batch_size=8, max_windows=p.text_windows, seed=ctx.seed,
                           samples=p.text_samples, steps_list=p.text_sample_steps)
    ppl, rows = res["perplexity"], res["samples"]
    length = min(64, diff.net.max_len)
    samples = {f"diffusion, {s} steps": diff.sample(1, length=length, steps=s, seed=ctx.seed)[0]
               for s in p.text_sample_steps}
    samples["AR twin"] = ar.sample(1, length=length, seed=ctx.seed)[0]
    infill = diff.infill(INFILL_TEMPLATE, 2, steps=16, seed=ctx.seed)
    result = {"perplexity": ppl, "samples_quality": rows, "samples": samples,
              "infill": {"template": INFILL_TEMPLATE, "outputs": infill}}
    _write_json(d / "eval.json", result)
    return result


# --------------------------------------------------------------------------------------------------
# the job


def run_demo(out: str | os.PathLike = "runs/demo", *, profile: str | Profile = "full", fresh: bool = False,
             data_root: str | os.PathLike | None = None, recipes: str | os.PathLike | None = None, seed: int = 0,
             threads: int | None = None, progress: bool = True, vocoder: str | os.PathLike | None = None,
             say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the whole job into ``out`` and return ``results.json``'s content (see the package doc).

    ``vocoder``: a saved vocoder folder (e.g. from the GPU recipe) used instead of training the tiny one; it
    is copied into the output folder, never written to.
    """
    import torch

    from .report import headline, write_report

    prof = PROFILES[profile] if isinstance(profile, str) else profile
    talk = say or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    source = Path(vocoder).resolve() if vocoder is not None else None
    source_hash = check_vocoder_dir(source) if source is not None else None  # before anything is written
    stages = Stages(out, fresh, talk)
    ctx = Context(prof, Path(recipes) if recipes else default_recipes(), Path(data_root) if data_root else None,
                  seed, progress, talk)
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()

    def settings(*fields: str, recipes: Sequence[tuple[str, ...]] = ()) -> dict[str, Any]:
        """What a stage depends on: its profile fields, the seed, and the text of its recipes."""
        return {"seed": seed, **{f: getattr(prof, f) for f in fields},
                "recipes": {"/".join(r): _fingerprint(ctx.recipe(*r).read_text()) for r in recipes}}

    trainer = ("_base", "trainer.yaml")
    for r in (trainer, ("vocoder", "tiny.yaml"), ("t2s", "vae_tiny.yaml"), ("t2s", "ldm_tiny.yaml"),
              ("textdiff", "tiny.yaml"), ("textdiff", "tiny_ar.yaml")):
        ctx.recipe(*r)  # all there before anything runs
    data = stages.run("data", {**settings("data_size"), "data_root": str(data_root)}, [],
                      lambda d: stage_data(ctx, d, force=fresh))["result"]
    speech, sounds, text = (data[k]["path"] for k in ("speech", "sounds", "text"))
    if source is None:
        voc = stages.run("vocoder", settings("vocoder_steps", "search_utterances", "val_batches",
                                             recipes=[trainer, ("vocoder", "tiny.yaml")]), ["data"],
                         lambda d: stage_vocoder(ctx, d, speech))["result"]
    else:
        voc = stages.run("vocoder", {**settings("search_utterances"), "pretrained": str(source),
                                     "content": source_hash}, ["data"],
                         lambda d: stage_pretrained_vocoder(ctx, d, source, speech))["result"]
    vae = stages.run("vae", settings("vae_steps", "val_batches", recipes=[trainer, ("t2s", "vae_tiny.yaml")]),
                     ["data"], lambda d: stage_vae(ctx, d, sounds))["result"]
    ev_voc = stages.run("eval_vocoder", settings("eval_utterances", "eval_seconds", "vocoder_eval_steps"),
                        ["vocoder"], lambda d: eval_vocoder(ctx, d, voc["model"], speech))
    t2s = stages.run("t2s", settings("ldm_steps", "t2s_steps", "val_batches",
                                     recipes=[trainer, ("t2s", "ldm_tiny.yaml")]), ["data", "vae"],
                     lambda d: stage_t2s(ctx, d, sounds, vae["model"]))["result"]
    # Text-to-sound audio goes through whichever mel -> audio path measured better on unseen speech: our
    # vocoder once it is trained enough, Griffin-Lim before that (a tiny CPU budget rarely gets there).
    backend = audio_backend(ev_voc["result"]["rows"])
    t2s_vocoder = voc["model"] if backend["name"] == "vocoder" else None
    lm_settings = ("lm_steps", "lm_batch_size", "val_batches")
    lm = stages.run("lm", settings(*lm_settings, recipes=[trainer, ("textdiff", "tiny.yaml")]), ["data"],
                    lambda d: stage_lm(ctx, d, text, "tiny.yaml"))["result"]
    lm_ar = stages.run("lm_ar", settings(*lm_settings, recipes=[trainer, ("textdiff", "tiny_ar.yaml")]), ["data"],
                       lambda d: stage_lm(ctx, d, text, "tiny_ar.yaml"))["result"]
    ev_t2s = stages.run("eval_t2s", {**settings("name", "t2s_captions", "t2s_steps", "classifier_epochs"),
                                     "audio": backend}, ["t2s", "vocoder"],
                        lambda d: eval_t2s(ctx, d, t2s["model"], sounds, t2s_vocoder))
    ev_text = stages.run("eval_text", settings("text_windows", "text_samples", "text_sample_steps"),
                         ["lm", "lm_ar"], lambda d: eval_text(ctx, d, lm["model"], lm_ar["model"], text))

    from ..toy import machine_info

    results = {
        "profile": asdict(prof), "seed": seed, "machine": machine_info(),
        "stage_seconds": {k: r["seconds"] for k, r in stages.records.items()},
        "data": data, "vocoder": {**voc, "eval": ev_voc["result"]},
        "t2s": {**t2s, "eval": ev_t2s["result"], "audio_backend": backend},
        "vae": vae, "text": {"diffusion": lm, "ar": lm_ar, "eval": ev_text["result"]},
        "curves": {name: loss_curves(out / name) for name in ("vocoder", "vae", "t2s", "lm", "lm_ar")},
    }
    results["wall_seconds_this_run"] = time.perf_counter() - t0
    page = write_report(out, results)
    results["report"] = str(page)
    _write_json(out / "results.json", results)
    for line in headline(results):
        talk(line)
    talk(f"report: {page}")
    return results
