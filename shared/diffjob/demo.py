"""The main job's stages, as data: what each trains or evaluates, what it depends on, and the profiles.

``STAGES`` lists them in order; ``run_demo`` runs (or reuses, see ``diffjob.stages``) each in turn and
writes the report. A stage is a function ``(ctx, folder, upstream results, recipes) -> result``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from audiodiff.audio import SAMPLE_RATE
from audiodiff.cli import lightning_cli
from audiodiff.data.loaders import AudioClips
from audiodiff.mel import MelConfig, MelConfigMismatchError
from audiodiff.t2s.evaluate import run_evaluation as run_t2s_evaluation
from audiodiff.t2s.evaluate import train_classifier
from audiodiff.t2s.module import export_pipeline, export_vae
from audiodiff.vocoder import Vocoder
from audiodiff.vocoder.evaluate import evaluate as evaluate_vocoder
from audiodiff.vocoder.evaluate import format_table as format_vocoder_table
from audiodiff.vocoder.inference import update_noise_schedule
from audiodiff.vocoder.module import export_checkpoint as export_vocoder
from audiodiff.vocoder.search import search_schedule
from diffcore import data
from diffcore.toy import machine_info
from textdiff.cli import build_cli as textdiff_cli
from textdiff.data.loaders import tokenize_corpus
from textdiff.evaluate import evaluate_pair as evaluate_text_pair
from textdiff.inference import TextGenerator
from textdiff.module import export_checkpoint as export_lm

from .stages import (
    DemoError,
    Job,
    Stages,
    configured_cli,
    cpu_cores,
    fingerprint,
    loss_curves,
    run_jobs,
    train,
    write_json,
)


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one demo run. ``full`` is the README's job (under 20 minutes on 2 CPU cores);
    ``smoke`` runs every code path in a few minutes (CI)."""

    name: str
    data_size: str
    vocoder_steps: int
    vae_steps: int
    ldm_steps: int
    ldm_high_steps: int
    lm_steps: int
    lm_batch_size: int
    search_utterances: int
    eval_utterances: int
    eval_seconds: float
    vocoder_eval_steps: tuple[int, ...]
    t2s_captions: int
    t2s_pairs: int
    t2s_steps: int
    classifier_epochs: int
    text_windows: int
    text_samples: int
    text_sample_steps: tuple[int, ...]
    text_block_steps: tuple[int, ...]
    val_batches: int


PROFILES = {
    "full": Profile("full", "small", vocoder_steps=400, vae_steps=300, ldm_steps=2000, ldm_high_steps=2000,
                    lm_steps=2000, lm_batch_size=12,
                    search_utterances=3, eval_utterances=8, eval_seconds=3.0, vocoder_eval_steps=(6, 50),
                    t2s_captions=96, t2s_pairs=32, t2s_steps=25, classifier_epochs=1, text_windows=512, text_samples=16,
                    text_sample_steps=(8, 32, 128), text_block_steps=(16, 32, 64), val_batches=4),
    "smoke": Profile("smoke", "tiny", vocoder_steps=12, vae_steps=12, ldm_steps=12, ldm_high_steps=12, lm_steps=12,
                     lm_batch_size=4,
                     search_utterances=1, eval_utterances=2, eval_seconds=1.0, vocoder_eval_steps=(6, 50),
                     t2s_captions=4, t2s_pairs=2, t2s_steps=4, classifier_epochs=1, text_windows=8, text_samples=2,
                     text_sample_steps=(4, 16), text_block_steps=(16,), val_batches=1),
}


def default_recipes() -> Path:
    """The recipes shipped with this package (``diffjob/recipes``: the project's ``recipes/`` folder)."""
    return Path(str(resources.files("diffjob") / "recipes"))


@dataclass
class Context:
    """What every stage needs: the profile, where recipes and data live, how to talk, and the
    pretrained vocoder (``--vocoder``) used instead of training one, if any."""

    profile: Profile
    recipes: Path
    data_root: Path | None
    seed: int
    progress: bool
    fresh: bool
    say: Callable[[str], None]
    vocoder: Path | None = None
    vocoder_hash: str | None = None

    def recipe(self, name: str) -> Path:
        """The recipe ``name`` (e.g. ``"vocoder/tiny.yaml"``), or :class:`DemoError` naming ``--recipes``."""
        path = self.recipes / name
        if not path.is_file():
            raise DemoError(f"recipe {path} not found; pass --recipes DIR with the project's recipes/ folder")
        return path


TRAINER = "_base/trainer.yaml"
Results = dict[str, dict[str, Any]]  # finished stages' records by name (``record["result"]`` is the output)


def stage_data(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    paths = {}
    for name in ("speech", "sounds", "text"):
        ctx.say(f"[data] {name}-{ctx.profile.data_size}")
        path = data.build(name, ctx.profile.data_size, root=ctx.data_root, seed=ctx.seed, force=ctx.fresh,
                          progress=ctx.progress)
        m = data.load_manifest(path)
        paths[name] = {"path": str(path), "splits": m.get("splits", {}), "build_seconds": m.get("build_seconds")}
    return paths


def _data(up: Results, name: str) -> str:
    return up["data"]["result"][name]["path"]


def stage_vocoder(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """Train the tiny vocoder and search its 6-step schedule, or (``--vocoder``) copy a trained one in."""
    speech = _data(up, "speech")
    if ctx.vocoder is not None:
        return _pretrained_vocoder(ctx, d, ctx.vocoder, speech)
    p = ctx.profile
    ckpt = train(d, lightning_cli, recipes, {"seed_everything": ctx.seed, "data": {"init_args": {"root": speech}}},
                 p.vocoder_steps, p.val_batches, ctx.progress)
    model = export_vocoder(ckpt, d / "model")
    vocoder = Vocoder.from_pretrained(model)
    search = _search_six_steps(ctx, vocoder, model, speech)
    return {"model": str(model), "params": sum(x.numel() for x in vocoder.net.parameters()),
            "steps": p.vocoder_steps, "search": search}


def check_vocoder_dir(path: Path) -> str:
    """Check that ``path`` holds a saved vocoder the demo can use (it loads, and its mel front end is the
    project's default, which the demo's data and mel VAE use); returns a hash of its files' contents."""
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


def _pretrained_vocoder(ctx: Context, d: Path, source: Path, speech: str) -> dict[str, Any]:
    """Use a vocoder trained elsewhere (e.g. the GPU recipe): a copy goes into the stage folder, so the
    user's folder is never written to, and a 6-step schedule is searched for the copy if it has none."""
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


def _search_six_steps(ctx: Context, vocoder: Vocoder, model: Path, speech: str) -> dict[str, Any]:
    """Search a 6-step schedule on validation utterances and store it as the exported model's default."""
    clips = AudioClips(speech, split="validation", sample_rate=SAMPLE_RATE, resample=True)
    n = min(ctx.profile.search_utterances, len(clips))
    audios = [torch.as_tensor(clips[i]["audio"])[: int(2.0 * SAMPLE_RATE)] for i in range(n)]
    ctx.say(f"[vocoder] searching a 6-step noise schedule on {len(audios)} validation utterance(s)")
    result = search_schedule(vocoder, audios, 6, seed=ctx.seed, rounds=1)
    update_noise_schedule(model, result.betas, make_default=True)
    return {"betas": list(result.betas), "objective": result.objective, "baselines": result.baselines}


def stage_vae(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    p, sounds = ctx.profile, _data(up, "sounds")
    ckpt = train(d, lightning_cli, recipes, {"seed_everything": ctx.seed, "data": {"init_args": {"root": sounds}}},
                 p.vae_steps, p.val_batches, ctx.progress)
    model = export_vae(ckpt, d / "model", data=sounds, batches=4 if p.name == "smoke" else 16)
    return {"model": str(model), "steps": p.vae_steps}


def _t2s_overrides(ctx: Context, d: Path, up: Results) -> dict[str, Any]:
    """The demo's settings of a latent-model recipe: its VAE, the sounds set, and caches in the stage folder."""
    return {"seed_everything": ctx.seed,
            "model": {"init_args": {"vae": up["vae"]["result"]["model"], "cache_path": str(d / "captions.safetensors"),
                                    "latent_cache_dir": str(d)}},
            "data": {"init_args": {"root": _data(up, "sounds")}}}


T2S_CACHES = ("captions.safetensors", "latents-train.safetensors", "latents-validation.safetensors")


def stage_t2s_cache(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """Encode every clip once (VAE posteriors, caption states) for both latent-model stages, which then
    train beside each other on copies of these files instead of each encoding the set again."""
    cli = configured_cli(d, lightning_cli, recipes, _t2s_overrides(ctx, d, up))
    cli.datamodule.setup("fit")
    cli.model.use_latent_cache(cli.datamodule)  # writes both caches into d
    return {"dir": str(d), "clips": {split: len(getattr(cli.datamodule, attr).cache)
                                     for split, attr in (("train", "train_set"), ("validation", "val_set"))}}


def _train_latent_model(ctx: Context, d: Path, up: Results, recipes: list[Path], steps: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name in T2S_CACHES:  # fresh copies on every (re)start: the cache stage's files are the truth
        shutil.copy2(Path(up["t2s_cache"]["result"]["dir"]) / name, d / name)
    return train(d, lightning_cli, recipes, _t2s_overrides(ctx, d, up), steps, ctx.profile.val_batches,
                 ctx.progress)


def stage_t2s(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """Train the latent denoiser on all times and export it alone as a pipeline with Griffin-Lim audio (the
    evaluation plugs in the vocoder when it measured better: ``AudioPipeline.from_pretrained(dir, vocoder=...)``)."""
    p = ctx.profile
    ckpt = _train_latent_model(ctx, d, up, recipes, p.ldm_steps)
    model = export_pipeline(ckpt, d / "model", steps=p.t2s_steps)
    return {"model": str(model), "checkpoint": str(ckpt), "steps": p.ldm_steps}


def stage_t2s_high(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """Train the high-noise expert (``ldm_tiny_high.yaml``: the same net on t in [0.8, 1] only)."""
    ckpt = _train_latent_model(ctx, d, up, recipes, ctx.profile.ldm_high_steps)
    return {"checkpoint": str(ckpt), "steps": ctx.profile.ldm_high_steps}


# where sampling hands over from the high-noise expert to the all-times net: the clips' count, duration and
# pitch are settled above t = 0.85 (README: where the structure is decided), and the expert trains from 0.8
EXPERT_BOUNDARY = 0.85


def stage_t2s_experts(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """The pipeline the job evaluates: the high-noise expert samples above t = EXPERT_BOUNDARY, the
    all-times net below it (``TimeSplitDenoiser``)."""
    model = export_pipeline(up["t2s"]["result"]["checkpoint"], d / "model", high=up["t2s_high"]["result"]["checkpoint"],
                            boundary=EXPERT_BOUNDARY, steps=ctx.profile.t2s_steps)
    return {"model": str(model), "boundary": EXPERT_BOUNDARY}



TEXT_SOURCES = ["shakespeare"]  # nanoGPT's shakespeare_char set-up: the CPU anchor for "a tiny model learns text"
# A byte-level BPE learnt from the corpus, not characters: at the same 2,000 steps both the masked models and the
# AR twin are better per character with it, and the masked models' gap to the twin per character is smaller
# (README results: the tokenizer row). The recipes tiny_bpe*.yaml are sized for it.
TEXT_TOKENIZER = "bpe:8192"


def stage_text_tokens(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """Token files of the text set's Shakespeare, with a tokenizer (``TEXT_TOKENIZER``) learnt from its train
    split."""
    info = tokenize_corpus(_data(up, "text"), TEXT_TOKENIZER, d / "tokens", sources=TEXT_SOURCES)
    return {"path": str(d / "tokens"), "vocab_size": info["tokenizer"]["vocab_size"], "splits": info["splits"]}


def stage_lm(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """Train a text model (the masked diffusion LM or its AR twin: the stage's recipe says which)."""
    p, tokens = ctx.profile, up["text_tokens"]["result"]
    vocab = tokens["vocab_size"]
    ckpt = train(d, textdiff_cli, recipes,
                 {"seed_everything": ctx.seed,
                  "model": {"init_args": {"net": {"init_args": {"vocab_size": vocab}}}},
                  "data": {"data_dir": tokens["path"], "batch_size": p.lm_batch_size, "vocab_size": vocab}},
                 p.lm_steps, p.val_batches, ctx.progress)
    model = export_lm(ckpt, d / "model", tokenizer_dir=Path(tokens["path"]) / "tokenizer")
    return {"model": str(model), "steps": p.lm_steps}


def eval_vocoder(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    p = ctx.profile
    vocoder = Vocoder.from_pretrained(up["vocoder"]["result"]["model"])
    clips = AudioClips(_data(up, "speech"), split="test", sample_rate=SAMPLE_RATE, resample=True)
    result = evaluate_vocoder(vocoder, clips, p.vocoder_eval_steps, limit=p.eval_utterances,
                              max_seconds=p.eval_seconds, seed=ctx.seed, audio_dir=d / "audio",
                              save_audio=min(3, p.eval_utterances), progress=lambda s: ctx.say(f"[eval_vocoder] {s}"))
    ctx.say("[eval_vocoder]\n" + format_vocoder_table(result["rows"]))
    write_json(d / "eval.json", result)
    return {"rows": result["rows"], "utterances": result["utterances"], "audio": str(d / "audio")}


def audio_backend(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The vocoder if its fewest-step row beats Griffin-Lim on log-mel L1 in the vocoder evaluation, else
    Griffin-Lim; with the two figures, so the report can say why."""
    gl = next(r for r in rows if r["system"] == "griffin_lim")
    voc = min((r for r in rows if r["system"] == "vocoder"), key=lambda r: r["steps"])
    better = voc["logmel_mean"] < gl["logmel_mean"]
    return {"name": "vocoder" if better else "griffin_lim", "vocoder_steps": voc["steps"],
            "vocoder_logmel": voc["logmel_mean"], "griffin_lim_logmel": gl["logmel_mean"]}


def stage_t2s_classifier(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """Train the in-domain audio classifier whose features the Frechet distance uses. It depends on the data
    alone, so it runs beside the VAE and latent-model training instead of after them."""
    _, metrics = train_classifier(_data(up, "sounds"), d / "classifier", epochs=ctx.profile.classifier_epochs,
                                  seed=ctx.seed, progress=lambda s: ctx.say(f"[t2s_classifier] {s}"))
    return {"classifier": str(d / "classifier"), "validation_accuracy": metrics}


def eval_t2s(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """Caption adherence and Frechet distance of the text-to-sound model; its audio goes through whichever
    mel -> audio path measured better on unseen speech: our vocoder once it is trained enough, Griffin-Lim
    before that (a tiny CPU budget rarely gets there)."""
    p = ctx.profile
    backend = audio_backend(up["eval_vocoder"]["result"]["rows"])
    vocoder = up["vocoder"]["result"]["model"] if backend["name"] == "vocoder" else None
    result = run_t2s_evaluation(up["t2s_experts"]["result"]["model"], _data(up, "sounds"), out=d, n=p.t2s_captions,
                                seed=ctx.seed, steps=p.t2s_steps, vocoder=vocoder,
                                classifier=up["t2s_classifier"]["result"]["classifier"],
                                seconds=3.0 if p.name != "smoke" else 1.5,
                                pairs=p.t2s_pairs, without_vae=False,  # the targets' ceiling is through the VAE
                                progress=lambda s: ctx.say(f"[eval_t2s] {s}"))
    keep = ("n", "steps", "guidance", "sampler", "audio", "vae_logmel_l1", "seconds_per_clip", "adherence",
            "paired", "frechet", "classifier_validation_accuracy", "seconds", "timings")
    return {**{k: result[k] for k in keep if k in result}, "eval_dir": str(d), "vocoder": vocoder,
            "audio_backend": backend}


INFILL_TEMPLATE = "ROMEO:\nBut soft, what [MASK:2] through yonder [MASK:2] breaks?"  # slots in tokens


def eval_text(ctx: Context, d: Path, up: Results, recipes: list[Path]) -> dict[str, Any]:
    """Both masked diffusion LMs (whole-window and block diffusion) against the AR twin on the same test
    windows: bounds, unconditional samples scored by the twin, and an infilling example (whole-window model)."""
    p = ctx.profile
    diff = TextGenerator.from_pretrained(up["lm"]["result"]["model"])
    block = TextGenerator.from_pretrained(up["lm_block"]["result"]["model"])
    ar = TextGenerator.from_pretrained(up["lm_ar"]["result"]["model"])
    ctx.say(f"[eval_text] perplexity on at most {p.text_windows} test windows; sample quality vs steps")
    common = {"batch_size": 64, "max_windows": p.text_windows, "seed": ctx.seed, "samples": p.text_samples}
    tokens = up["text_tokens"]["result"]["path"]
    res = evaluate_text_pair(diff, ar, tokens, steps_list=p.text_sample_steps, **common)
    res_block = evaluate_text_pair(block, ar, tokens, steps_list=p.text_block_steps, **common)
    length = min(64, diff.net.max_len)
    samples = {f"diffusion, {s} steps": diff.sample(1, length=length, steps=s, seed=ctx.seed)[0]
               for s in p.text_sample_steps}
    samples.update({f"block diffusion, {s} steps": block.sample(1, length=length, steps=s, seed=ctx.seed)[0]
                    for s in p.text_block_steps})
    samples["AR twin"] = ar.sample(1, length=length, seed=ctx.seed)[0]
    infill = diff.infill(INFILL_TEMPLATE, 2, seed=ctx.seed)
    result = {"perplexity": res["perplexity"], "samples_quality": res["samples"], "samples": samples,
              "block": {"block_size": block.net.block_size, "perplexity": res_block["perplexity"],
                        "samples_quality": [r for r in res_block["samples"] if r["sampler"].startswith("diffusion")]},
              "infill": {"template": INFILL_TEMPLATE, "outputs": infill}}
    write_json(d / "eval.json", result)
    return result


# --------------------------------------------------------------------------------------------------
# the job, as data


@dataclass(frozen=True)
class Stage:
    """One step of the job. It is reused when its ``fields`` of the profile, the seed, the text of its
    ``recipes`` (after ``_base/trainer.yaml``) and its ``upstream`` stages' run ids are unchanged."""

    name: str
    run: Callable[[Context, Path, Results, list[Path]], dict[str, Any]]
    upstream: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    recipes: tuple[str, ...] = ()
    extra: Callable[[Context], dict[str, Any]] = field(default=lambda ctx: {})


LM_FIELDS = ("lm_steps", "lm_batch_size", "val_batches")
# Order matters: among the stages whose upstream is done, the earlier in this list starts first. The
# text-to-sound chain (VAE, latent model, its evaluation) is the longest, so its stages come before the
# text models, which fill the other core meanwhile.
STAGES: tuple[Stage, ...] = (
    Stage("data", stage_data, (), ("data_size",), extra=lambda ctx: {"data_root": str(ctx.data_root)}),
    Stage("vocoder", stage_vocoder, ("data",), ("vocoder_steps", "search_utterances", "val_batches"),
          ("vocoder/tiny.yaml",),
          extra=lambda ctx: {"pretrained": str(ctx.vocoder), "content": ctx.vocoder_hash} if ctx.vocoder else {}),
    Stage("vae", stage_vae, ("data",), ("vae_steps", "val_batches"), ("t2s/vae_tiny.yaml",)),
    Stage("eval_vocoder", eval_vocoder, ("data", "vocoder"), ("eval_utterances", "eval_seconds", "vocoder_eval_steps")),
    Stage("t2s_cache", stage_t2s_cache, ("data", "vae"), (), ("t2s/ldm_tiny.yaml",)),
    Stage("t2s", stage_t2s, ("data", "vae", "t2s_cache"), ("ldm_steps", "t2s_steps", "val_batches"),
          ("t2s/ldm_tiny.yaml",)),
    Stage("t2s_high", stage_t2s_high, ("data", "vae", "t2s_cache"), ("ldm_high_steps", "val_batches"),
          ("t2s/ldm_tiny.yaml", "t2s/ldm_tiny_high.yaml")),
    Stage("t2s_experts", stage_t2s_experts, ("t2s", "t2s_high"), ("t2s_steps",),
          extra=lambda ctx: {"boundary": EXPERT_BOUNDARY}),
    Stage("t2s_classifier", stage_t2s_classifier, ("data",), ("classifier_epochs",)),
    Stage("eval_t2s", eval_t2s, ("data", "t2s_experts", "vocoder", "eval_vocoder", "t2s_classifier"),
          ("name", "t2s_captions", "t2s_pairs", "t2s_steps")),
    Stage("text_tokens", stage_text_tokens, ("data",), extra=lambda ctx: {"tokenizer": TEXT_TOKENIZER}),
    # longest first: the core that finishes the text-to-sound chain then takes the shortest (lm)
    Stage("lm_block", stage_lm, ("text_tokens",), LM_FIELDS, ("textdiff/tiny_bpe_block.yaml",)),
    Stage("lm_ar", stage_lm, ("text_tokens",), LM_FIELDS, ("textdiff/tiny_bpe_ar.yaml",)),
    Stage("lm", stage_lm, ("text_tokens",), LM_FIELDS, ("textdiff/tiny_bpe.yaml",)),
    Stage("eval_text", eval_text, ("text_tokens", "lm", "lm_block", "lm_ar"),
          ("text_windows", "text_samples", "text_sample_steps", "text_block_steps")),
)
def _call_stage(run: Callable[..., dict[str, Any]], ctx: Context, paths: list[Path], d: Path,
                up: Results) -> dict[str, Any]:
    return run(ctx, d, up, paths)


def _say_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# the training stages whose loss curves the report draws
CURVES = ("vocoder", "vae", "t2s", "t2s_high", "lm", "lm_block", "lm_ar")


def run_demo(out: str | os.PathLike = "runs/demo", *, profile: str | Profile = "full", fresh: bool = False,
             data_root: str | os.PathLike | None = None, recipes: str | os.PathLike | None = None, seed: int = 0,
             threads: int | None = None, jobs: int | None = None, progress: bool = True,
             vocoder: str | os.PathLike | None = None, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the whole job into ``out`` and return ``results.json``'s content (see the package doc).

    ``vocoder``: a saved vocoder folder (e.g. from the GPU recipe) used instead of training the tiny one; it
    is copied into the output folder, never written to. ``jobs``: stages run at once, each in its own
    process (default 2 on a machine with 2 or more cores, else 1); ``threads``: torch threads per stage
    (default: the cores divided among the jobs).
    """
    from .report import headline, write_report

    prof = PROFILES[profile] if isinstance(profile, str) else profile
    talk = say or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    source = Path(vocoder).resolve() if vocoder is not None else None
    ctx = Context(prof, Path(recipes) if recipes else default_recipes(), Path(data_root) if data_root else None,
                  seed, progress, fresh, talk, source, check_vocoder_dir(source) if source else None)
    stage_recipes = {s.name: [ctx.recipe(r) for r in ((TRAINER, *s.recipes) if s.recipes else ())]
                     for s in STAGES}  # all there, and the pretrained vocoder checked, before anything is written
    stages = Stages(out, fresh, talk)
    cores = cpu_cores()
    jobs = jobs or (2 if cores >= 2 else 1)
    threads = threads or max(1, cores // jobs)
    torch.set_num_threads(threads)
    # in a worker process: no progress bars (two would garble each other), lines to stderr
    worker_ctx = replace(ctx, say=_say_stderr, progress=False) if jobs > 1 else ctx
    t0 = time.perf_counter()
    todo = []
    for s in STAGES:
        paths = stage_recipes[s.name]
        settings = {"seed": seed, **{f: getattr(prof, f) for f in s.fields}, **s.extra(ctx),
                    "recipes": {str(p.relative_to(ctx.recipes)): fingerprint(p.read_text()) for p in paths}}
        todo.append(Job(s.name, settings, s.upstream, partial(_call_stage, s.run, worker_ctx, paths)))
    talk(f"{len(STAGES)} stages, {jobs} at a time with {threads} torch thread(s) each")
    run_jobs(stages, todo, workers=jobs, threads=threads)

    r = {name: rec["result"] for name, rec in stages.records.items()}
    results = {
        "profile": asdict(prof), "seed": seed, "machine": machine_info(),
        "stage_seconds": {k: rec["seconds"] for k, rec in stages.records.items()},
        "data": r["data"], "vocoder": {**r["vocoder"], "eval": r["eval_vocoder"]},
        "t2s": {**r["t2s"], "high": r["t2s_high"], "experts": r["t2s_experts"], "eval": r["eval_t2s"],
                "audio_backend": r["eval_t2s"]["audio_backend"]},
        "vae": r["vae"],
        "text": {"diffusion": r["lm"], "block": r["lm_block"], "ar": r["lm_ar"], "eval": r["eval_text"],
                 "tokens": r["text_tokens"]},
        "curves": {name: loss_curves(out / name) for name in CURVES},
    }
    results["wall_seconds_this_run"] = time.perf_counter() - t0
    results["parallel"] = {"jobs": jobs, "threads_per_job": threads}
    page = write_report(out, results)
    results["report"] = str(page)
    write_json(out / "results.json", results)
    for line in headline(results):
        talk(line)
    talk(f"report: {page}")
    return results
