"""The demo's report: one static HTML page (``<out>/report/index.html``) with its media beside it
(``media/*.wav``, ``media/*.png``), loss curves as inline SVG. No server, no JavaScript, no network:
it opens from disk in any browser, and the folder can be copied or zipped as it is."""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffcore.data import describe_split

# ---------------------------------------------------------------------------------------------------
# small HTML helpers


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{x:,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _esc(x)
    if math.isnan(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> str:
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _num(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _text(x: Any) -> _Raw:
    return _Raw(_esc(x))


def _interval(bounds: Sequence[Any]) -> _Raw:
    """A 95% interval cell: "[lo, hi]" to 2 digits."""
    return _Raw("[" + ", ".join(_num(x, 2) for x in bounds) + "]")


def svg_curves(curves: dict[str, list[tuple[int, float]]], width: int = 560, height: int = 220) -> str:
    """Inline SVG line chart of {name: [(step, value)]} (log scale in y when every value is positive)."""
    series = {k: v for k, v in curves.items() if v}
    if not series:
        return "<p>no losses were logged</p>"
    steps = [s for v in series.values() for s, _ in v]
    values = [y for v in series.values() for _, y in v]
    log = min(values) > 0
    tf = (lambda y: math.log10(y)) if log else (lambda y: y)
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(map(tf, values)), max(map(tf, values))
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    ml, mr, mt, mb = 56, 12, 10, 28
    pw, ph = width - ml - mr, height - mt - mb

    def px(s: float, y: float) -> tuple[float, float]:
        return ml + (s - x0) / (x1 - x0) * pw, mt + (1 - (tf(y) - y0) / (y1 - y0)) * ph

    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        label = f"{10 ** yv:.3g}" if log else f"{yv:.3g}"
        yy = mt + (1 - frac) * ph
        parts.append(f'<text x="{ml - 4}" y="{yy + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
    for frac in (0.0, 0.5, 1.0):
        xv = x0 + frac * (x1 - x0)
        parts.append(f'<text x="{ml + frac * pw:.1f}" y="{height - 10}" font-size="10" text-anchor="middle">'
                     f"{xv:.0f}</text>")
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 0}" font-size="10" text-anchor="middle">step</text>')
    for i, (name, pts) in enumerate(sorted(series.items())):
        c = colours[i % len(colours)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (px(s, v) for s, v in pts))
        if len(pts) == 1:
            x, y = px(*pts[0])
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"/>')
        else:
            parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.3" points="{coords}"/>')
        parts.append(f'<text x="{ml + 6}" y="{mt + 14 + 12 * i}" font-size="11" fill="{c}">{_esc(name)}'
                     f" (last {pts[-1][1]:.4g})</text>")
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------
# media


class Media:
    """Copies WAVs into ``media/`` and draws their mel images, so the page only links files beside it."""

    def __init__(self, root: Path):
        self.dir = root / "media"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._mel = None

    def add(self, src: str | Path, name: str) -> str:
        """Copy ``src`` as ``media/<name>.wav``, draw ``media/<name>.png``; return the figure HTML."""
        import soundfile as sf
        import torch

        from audiodiff.mel import MelSpectrogram, mel_image, write_png

        if self._mel is None:
            self._mel = MelSpectrogram()
        wav = self.dir / f"{name}.wav"
        shutil.copyfile(src, wav)
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
        mel = self._mel(torch.from_numpy(audio.mean(axis=1)))
        write_png(self.dir / f"{name}.png", mel_image(mel, vmin=-11.5, vmax=float(mel.max())))
        return (f'<figure><audio controls preload="metadata" src="media/{name}.wav"></audio>'
                f'<img src="media/{name}.png" alt="mel of {name}" height="80"></figure>')


# ---------------------------------------------------------------------------------------------------
# sections

VOCODER_METRICS = (("logmel", "log-mel L1 ↓"), ("mrstft", "MR-STFT ↓"), ("pesq_wb", "PESQ-wb ↑"),
                   ("stoi", "STOI ↑"))


def _system_name(row: dict[str, Any]) -> str:
    return row["system"].replace("_", " ") + (f" ({row['steps']} steps)" if row.get("steps") else "")


def _vocoder_origin(voc: dict[str, Any]) -> str:
    if voc.get("source"):
        return (f"WaveGrad ({voc['params']:,} parameters) trained elsewhere, loaded from "
                f"<code>{_esc(voc['source'])}</code> (<code>--vocoder</code>)")
    return (f"WaveGrad <code>tiny</code> ({voc['params']:,} parameters), {voc['steps']:,} training steps on the "
            "speech set")


def vocoder_section(results: dict[str, Any], media: Media) -> str:
    voc = results["vocoder"]
    ev = voc["eval"]
    rows = [[_text(_system_name(r)), *[r[f"{m}_mean"] for m, _ in VOCODER_METRICS], r["rtf"]] for r in ev["rows"]]
    parts = ["<section id='speech'><h2>Speech: WaveGrad vocoder</h2>",
             f"<p>{_vocoder_origin(voc)}; evaluated on the <b>test</b> split, whose speakers never appear in "
             "training. "
             "Griffin-Lim from the same mel is the no-learning floor, the ground truth the ceiling. "
             "RTF: seconds of compute per second of audio.</p>",
             _table(["system", *[h for _, h in VOCODER_METRICS], "RTF"], rows,
                    f"{ev['rows'][0]['n']} unseen-speaker utterances (mean)")]
    audio_dir = Path(ev["audio"])
    systems = [("ground_truth", "ground truth")] + [
        (f"vocoder_{r['steps']}", f"WaveGrad, {r['steps']} steps") for r in ev["rows"] if r["system"] == "vocoder"
    ] + [("griffin_lim", "Griffin-Lim")]
    for i, utt in enumerate(ev["utterances"]):
        files = [(label, audio_dir / f"{i:03d}_{key}.wav") for key, label in systems]
        if not all(f.is_file() for _, f in files):
            continue
        parts.append(f"<h3>{_esc(Path(utt['path']).name)} (speaker {_esc(utt.get('speaker'))}, "
                     f"{utt['seconds']:.1f} s)</h3><div class='row'>")
        for (label, f), (key, _) in zip(files, systems):
            parts.append(f"<div class='cell'><p>{_esc(label)}</p>{media.add(f, f'speech_{i}_{key}')}</div>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _expert_note(t2s: dict[str, Any]) -> str:
    """How the high-noise expert shares the sampling path (older runs: none)."""
    high, experts = t2s.get("high"), t2s.get("experts")
    if not high or not experts:
        return ""
    return (f"; above t = {experts['boundary']} a high-noise expert, the same net trained on those times only, "
            f"samples instead ({high['steps']:,} steps)")


def t2s_section(results: dict[str, Any], media: Media) -> str:
    t2s = results["t2s"]
    ev = t2s["eval"]
    adh = ev["adherence"]
    attrs = sorted(k for k in adh["generated"] if k not in ("all_correct", "all_correct_by_kind", "n"))
    head = ["", "all correct", *attrs]
    rows = [[_text(label), adh[k]["all_correct"], *[adh[k].get(a) for a in attrs]]
            for k, label in (("generated", "generated"), ("ceiling", "ceiling: real clips → mel → VAE → audio"),
                             ("chance", "chance: generated vs shuffled captions")) if k in adh]
    interval = (adh.get("stats") or {}).get("generated", {}).get("interval", {})
    if interval:
        rows.insert(1, [_text("generated, 95% interval"), _Raw(""),
                        *[_interval(interval[a]) if a in interval else None
                          for a in attrs]])
    paired = ev.get("paired") or {}
    confusion = (adh.get("stats") or {}).get("generated", {}).get("confusion") or {}  # older runs: none
    confusion_tables = "".join(_confusion_table(a, confusion[a]) for a in attrs if a in confusion)

    def shift(v: dict[str, Any]) -> Any:  # the mean pitch move in octaves, with its interval (older runs: none)
        o = v.get("octaves") or {}
        return _Raw(f"{_num(o['mean'], 2)} {_interval(o['interval'])}") if o.get("measured") else None

    paired_rows = [[_text(attr), v["right_way"], _interval(v["interval"]), shift(v), v["n"]]
                   for attr, v in paired.items()]
    fd = ev["frechet"]
    fd_rows = [[_text("generated vs real"), fd["generated_vs_real"]],
               [_text("real → mel → vocoder vs real"), fd["resynthesized_real_vs_real"]],
               [_text("real vs other real clips (floor)"), fd["real_vs_real_floor"]]]
    parts = ["<section id='sounds'><h2>Text-to-sound: latent diffusion</h2>",
             f"<p>Mel VAE ({results['vae']['steps']:,} steps) and UNet denoiser with cross-attention to frozen "
             f"MiniLM caption states ({t2s['steps']:,} steps{_expert_note(t2s)}), {ev['steps']} "
             f"{_esc(ev['sampler'])} steps at "
             f"guidance {ev['guidance']}, audio through {_esc(ev['audio'])}. Captions are <b>held-out attribute "
             "combinations</b>: never heard in training. Attributes are measured back from the waveform.</p>",
             _table(head, rows, f"caption adherence (accuracy), {adh['generated']['n']} held-out captions"),
             (f"<details><summary>which way the generated clips go wrong: measured label by caption label"
              f"</summary>{confusion_tables}</details>" if confusion_tables else ""),
             _table(["attribute", "right way", "95% interval", "octaves moved [95%]", "pairs"], paired_rows,
                    "paired one-word test: the same seed with 'low' and 'high' in the caption; how often the "
                    "measured pitch moves the right way (chance 0.5), and how far (0 for a model that ignores "
                    "the word)") if paired_rows else "",
             _table(["", "Fréchet distance ↓"], fd_rows,
                    f"in-domain classifier features, N = {fd['n']} (small N inflates every value)"),
             f"<p>VAE reconstruction log-mel L1 on these clips: {_num(ev['vae_logmel_l1'])}.</p>",
             _backend_note(t2s.get("audio_backend"))]
    out_dir = Path(ev["eval_dir"])
    captions_file = out_dir / "captions.txt"
    captions = captions_file.read_text().splitlines() if captions_file.is_file() else []
    parts.append("<div class='row'>")
    for i, caption in enumerate(captions):
        wav = out_dir / f"gen_{i:02d}.wav"
        if wav.is_file():
            parts.append(f"<div class='cell'><p>“{_esc(caption)}”</p>{media.add(wav, f'sound_{i}')}</div>")
    parts.append("</div></section>")
    return "".join(parts)


def _confusion_table(attr: str, rows: dict[str, dict[str, int]]) -> str:
    """One attribute's confusion counts: a row per caption label, a column per measured label ("None": the
    attribute could not be measured from the clip)."""
    measured = sorted({m for r in rows.values() for m in r}, key=lambda m: (m == "None", m))
    body = [[_text(t), *[r.get(m, 0) for m in measured]] for t, r in rows.items()]
    return _table([f"{attr}: caption ↓, measured →", *measured], body)


def _backend_note(b: dict[str, Any] | None) -> str:
    if not b:
        return ""
    why = (f"the vocoder ({b['vocoder_steps']} steps) measured log-mel L1 {_num(b['vocoder_logmel'])} on unseen "
           f"speech against Griffin-Lim's {_num(b['griffin_lim_logmel'])}")
    if b["name"] == "vocoder":
        return f"<p>Audio comes from our WaveGrad vocoder: {why}.</p>"
    return (f"<p>Audio comes from Griffin-Lim, not our vocoder: {why}, so the vocoder would have hidden what "
            "the denoiser learned. With a trained vocoder (the GPU recipe, passed as <code>--vocoder DIR</code>) "
            "the pipeline uses it.</p>")


def text_section(results: dict[str, Any]) -> str:
    ev = results["text"]["eval"]
    ppl, block = ev["perplexity"], ev.get("block")
    d = ppl["diffusion"]
    figures = {"ar": ("autoregressive twin (exact, ceiling)", ppl["ar"]),
               "diffusion": ("masked diffusion (NELBO bound)", d)}
    if block:
        figures["block"] = (f"block diffusion, blocks of {block['block_size']} (NELBO bound)",
                            block["perplexity"]["diffusion"])
    if "unigram" in ppl:
        figures["unigram"] = ("unigram (floor)", ppl["unigram"])
    rows = [[_text(name), f["nll"], f.get("nats_per_char"), f.get("bits_per_char"),
             _Raw(("≤ " if k in ("diffusion", "block") else "") + _num(f.get("ppl_per_char", f["ppl"]), 2))]
            for k, (name, f) in figures.items()]
    quality = ev["samples_quality"]
    if block:
        quality = [r for r in quality if r["sampler"].startswith("diffusion")] + \
            [{**r, "sampler": "block " + r["sampler"]} for r in block["samples_quality"]] + \
            [r for r in quality if not r["sampler"].startswith("diffusion")]
    q_rows = [[_text(r["sampler"]), r.get("steps"), r.get("gen_ppl_char"), r.get("entropy"), r.get("distinct4"),
               r.get("nfe"), r.get("tokens_per_s")] for r in quality]
    gaps = f"diffusion bound {ppl.get('gap_percent_char', ppl['gap_percent']):+.1f}%"
    if block:
        bp = block["perplexity"]
        gaps += f", block diffusion {bp.get('gap_percent_char', bp['gap_percent']):+.1f}%"
    parts = ["<section id='text'><h2>Text: masked diffusion LMs and their AR twin</h2>",
             f"<p>The same transformer trained {results['text']['diffusion']['steps']:,} steps each on the same "
             "tokens: bidirectional with the masked-diffusion objective, as block diffusion (each block denoised "
             "given the clean blocks before it) and causal with next-token loss.</p>",
             _table(["model", "nats/token", "nats/char", "bits/char", "perplexity/char"], rows,
                    f"test split, {d['tokens']:,} tokens; {gaps} vs AR (per-character perplexity)"),
             _table(["sampler", "steps", "generative ppl/char (AR-scored) ↓", "unigram entropy", "distinct 4-grams",
                     "network calls", "tokens/s"], q_rows,
                    "unconditional samples; the real-text row is what samples should match"),
             "<h3>Samples</h3>"]
    for label, sample in ev["samples"].items():
        parts.append(f"<p><b>{_esc(label)}:</b></p><pre>{_esc(sample)}</pre>")
    parts.append(f"<h3>Infilling</h3><p>template: <code>{_esc(ev['infill']['template'])}</code></p>")
    for s in ev["infill"]["outputs"]:
        parts.append(f"<pre>{_esc(s)}</pre>")
    parts.append("</section>")
    return "".join(parts)


def curves_section(results: dict[str, Any]) -> str:
    names = {"vocoder": "WaveGrad vocoder", "vae": "mel VAE", "t2s": "latent denoiser",
             "t2s_high": "latent denoiser, high-noise expert",
             "lm": "masked diffusion LM", "lm_block": "block diffusion LM", "lm_ar": "AR twin"}
    parts = ["<section id='training'><h2>Training losses</h2><div class='row'>"]
    for key, label in names.items():
        parts.append(f"<div class='cell'><h3>{_esc(label)}</h3>{svg_curves(results['curves'].get(key, {}))}</div>")
    parts.append("</div></section>")
    return "".join(parts)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}caption{text-align:left;font-style:italic;padding:4px 0}
.row{display:flex;flex-wrap:wrap;gap:12px}.cell{flex:0 0 auto}figure{margin:0}figure img{display:block;
max-width:280px;image-rendering:pixelated}audio{width:280px}pre{white-space:pre-wrap;background:#f5f5f5;
padding:6px}"""


def headline(results: dict[str, Any]) -> list[str]:
    """The terminal summary: the key figure of each model next to its reference points."""
    voc = {(r["system"], r["steps"]): r for r in results["vocoder"]["eval"]["rows"]}
    gl = voc[("griffin_lim", None)]
    six = next(r for (s, _), r in voc.items() if s == "vocoder")
    adh = results["t2s"]["eval"]["adherence"]
    ppl = results["text"]["eval"]["perplexity"]
    secs = sum(results["stage_seconds"].values())
    lines = [
        f"demo ({results['profile']['name']}): {results['wall_seconds_this_run'] / 60:.1f} min wall this run; "
        f"the stages took {secs / 60:.1f} min together ({results['parallel']['jobs']} at a time)",
        f"  vocoder, unseen speakers, PESQ-wb: WaveGrad {six['steps']} steps {six['pesq_wb_mean']:.2f} | "
        f"Griffin-Lim {gl['pesq_wb_mean']:.2f} | log-mel L1 {six['logmel_mean']:.3f} vs {gl['logmel_mean']:.3f}",
        f"  text-to-sound, held-out captions, all attributes correct: generated "
        f"{adh['generated']['all_correct']:.2f} | ceiling {adh['ceiling']['all_correct']:.2f} | chance "
        f"{adh['chance']['all_correct']:.2f}",
        f"  text, test nats/char: diffusion <= {ppl['diffusion'].get('nats_per_char', ppl['diffusion']['nll']):.3f} | "
        f"AR twin {ppl['ar'].get('nats_per_char', ppl['ar']['nll']):.3f} | unigram "
        f"{ppl.get('unigram', {}).get('nats_per_char', float('nan')):.3f} "
        f"(perplexity gap {ppl.get('gap_percent_char', ppl['gap_percent']):+.0f}%)",
    ]
    block = results["text"]["eval"].get("block")
    if block:
        bp = block["perplexity"]
        lines.append(f"  text, block diffusion (blocks of {block['block_size']}): <= "
                     f"{bp['diffusion'].get('nats_per_char', bp['diffusion']['nll']):.3f} nats/char "
                     f"(perplexity gap {bp.get('gap_percent_char', bp['gap_percent']):+.0f}%)")
    return lines


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """Write ``out/report/index.html`` (+ media) from the demo's results; returns the page's path. The page
    is written to a temporary name and renamed, so a reader never sees half of it."""
    root = out / "report"
    if root.exists():
        shutil.rmtree(root)
    media = Media(root)
    prof = results["profile"]
    m = results["machine"]
    stage_rows = [[_text(k), v] for k, v in results["stage_seconds"].items()]
    data_rows = [[_text(k), _text(", ".join(f"{s}: {describe_split(v)}" for s, v in d["splits"].items()))]
                 for k, d in results["data"].items()]
    body = [
        f"<h1>audiodiff demo report ({_esc(prof['name'])})</h1>",
        f"<p>{_esc(m.get('cpu'))}, {m.get('cores', '?')} cores, torch {_esc(m.get('torch'))}, seed {results['seed']}."
        " Tiny models on a CPU budget: these figures show the pipeline working end to end, not what the "
        "models reach with real training (see the README's GPU recipes).</p>",
        "<p><a href='#speech'>speech</a> · <a href='#sounds'>text-to-sound</a> · <a href='#text'>text</a> · "
        "<a href='#training'>training</a></p>",
        "<ul>" + "".join(f"<li>{_esc(line.strip())}</li>" for line in headline(results)) + "</ul>",
        _table(["data set", "splits"], data_rows, f"built-in data, size {prof['data_size']}"),
        _table(["stage", "seconds"], stage_rows, "wall time of each stage (when it ran)"),
        vocoder_section(results, media), t2s_section(results, media), text_section(results),
        curves_section(results),
    ]
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>audiodiff demo report</title>"
            f"<style>{CSS}</style></head><body>" + "".join(body) + "</body></html>\n")
    index = root / "index.html"
    tmp = root / ".index.html.partial"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index
