"""textdiff: the masked diffusion LM, its AR twin, sampling, infilling, evaluation, recipes and CLI.

The models are tiny and the vocabulary is a character-level stand-in for the GPT-2 tokenizer (same
interface: encode/decode/eot_id/vocab_size/save/from_dir), so nothing here depends on the data
pipeline or on downloaded files.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffcore.discrete import LogLinearMasking, mask_tokens, masked_nelbo, sample_masked_blocks, subs_log_probs
from diffcore.losses import sample_t
from textdiff import cli, inference
from textdiff.evaluate import (
    SAMPLER_SETTINGS,
    ar_perplexity,
    compare_perplexity,
    compare_samplers,
    diffusion_bound,
    distinct_ngrams,
    generative_perplexity,
    reference_quality,
    sample_quality,
    sampler_name,
    unigram_entropy,
    unigram_nll,
    window_characters,
)
from textdiff.inference import TextGenerator, parse_infill, prompt_canvas, sample_autoregressive
from textdiff.model import KVCache, TransformerNet, diffusion_nelbo
from textdiff.module import ARModule, ContiguousWindows, MaskedDiffusionModule, RandomWindows, TokenDataModule, ar_nll

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers", "ignore:.*LeafSpec.*is deprecated",
                                        "ignore:.*is smaller than the logging", "ignore:The dirpath has changed",
                                        "ignore:.*tensorboardX.*")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


class CharTokenizer:
    """A character-level tokenizer with the interface of ``textdiff.tokenizer.Tokenizer``."""

    ALPHABET = "abcdefghijklmnopqrstuvwxyz .,'\n"

    def __init__(self, alphabet: str = ALPHABET):
        self.alphabet = alphabet
        self.eot_id = len(alphabet)
        self.vocab_size = len(alphabet) + 1

    def encode(self, text: str) -> list[int]:
        bad = sorted({c for c in text if c not in self.alphabet})
        if bad:
            raise ValueError(f"characters {bad} are not in the vocabulary")
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] if i < len(self.alphabet) else "|" for i in ids)

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "alphabet.json").write_text(json.dumps(self.alphabet))

    @classmethod
    def from_dir(cls, directory) -> CharTokenizer:
        return cls(json.loads((Path(directory) / "alphabet.json").read_text()))


TOK = CharTokenizer()
V = TOK.vocab_size  # 32 real tokens; id 32 is the mask / BOS


class EotLover(TransformerNet):
    """A net whose end-of-text logit is raised by 100 everywhere."""

    def forward(self, x, t=None, *, cache=None):
        out = super().forward(x, t, cache=cache)
        out[..., TOK.eot_id] += 100.0
        return out


def make_net(causal: bool = False, dtype=torch.float32, seed: int = 0, cls=TransformerNet, **kw) -> TransformerNet:
    torch.manual_seed(seed)
    kw = {"vocab_size": V, "dim": 32, "depth": 2, "heads": 2, "max_len": 24, "causal": causal, **kw}
    return cls(**kw).to(dtype).eval()


def rand_tokens(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# the network


def test_net_never_predicts_mask_and_subs_copies_visible_tokens():
    net = make_net(pad_multiple=64)
    assert net.embed.weight.shape[0] == 64 and net.mask_id == V  # padded table, mask = the extra row
    x0 = rand_tokens(3, 12)
    z = mask_tokens(x0, 0.5, net.mask_id, generator=torch.Generator().manual_seed(1))
    logits = net(z)
    assert logits.shape == (3, 12, V + 1)  # padding rows are not in the output at all
    assert torch.all(logits[..., V] == -math.inf) and torch.isfinite(logits[..., :V]).all()
    logp = subs_log_probs(logits, z, net.mask_id)
    assert torch.all(logp[..., V] == -math.inf)  # never the mask
    visible = z != net.mask_id
    assert visible.any() and (~visible).any()
    assert torch.all(logp[visible].argmax(-1) == z[visible]) and torch.all(logp[visible].max(-1).values == 0)
    assert torch.allclose(logp[~visible].exp().sum(-1), torch.ones(int((~visible).sum())))


def test_nelbo_matches_a_hand_computation():
    net = make_net(dtype=torch.float64)
    module = MaskedDiffusionModule(net, ema_decay=None)
    x0 = rand_tokens(2, 10, seed=3)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    loss = masked_nelbo(module.logits_fn, x0, module.schedule, V, t=t, generator=torch.Generator().manual_seed(7))
    # by hand: the same masks, cross-entropy of the real-token softmax at masked positions, weight 1/t
    alpha = 1 - (1 - 1e-3) * t
    u = torch.rand(x0.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    masked = u >= alpha[:, None]
    z = torch.where(masked, torch.full_like(x0, V), x0)
    logp = torch.log_softmax(net(z)[..., :V], -1)
    nll = -logp.gather(-1, x0[..., None])[..., 0]
    hand = ((nll * masked).sum(1) / t).sum() / x0.numel()
    assert masked.any() and torch.allclose(loss, hand, rtol=1e-10)


def test_ar_twin_is_causal_and_the_diffusion_net_is_not():
    x = rand_tokens(2, 16)
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % V
    ar, bi = make_net(causal=True, dtype=torch.float64), make_net(causal=False, dtype=torch.float64)
    la, lb = ar(x), ar(y)
    assert torch.equal(la[:, :9], lb[:, :9]) and not torch.allclose(la[:, 9:], lb[:, 9:])
    assert not torch.allclose(bi(x)[:, :9], bi(y)[:, :9])
    assert ar.num_parameters() == bi.num_parameters()  # the twin is the same network


def test_kv_cache_decoding_equals_full_recomputation():
    net = make_net(causal=True, dtype=torch.float64)
    x = rand_tokens(2, 14)
    full = net(x)
    cache = KVCache(net, 2, 14)
    parts = [net(x[:, :5], cache=cache), net(x[:, 5:8], cache=cache)]  # prefill, then a chunk at an offset
    parts += [net(x[:, i:i + 1], cache=cache) for i in range(8, 14)]  # then one token at a time
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-10)
    prefix = rand_tokens(3, 4, seed=5)
    runs = [sample_autoregressive(net, prefix, 20, use_cache=c, generator=torch.Generator().manual_seed(0))
            for c in (True, False)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0][:, :4], prefix)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the cache follows the autocast dtype
        out = sample_autoregressive(net.float(), prefix, 8, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 8) and torch.equal(out[:, :4], prefix)
    with pytest.raises(ValueError, match="causal"):
        KVCache(make_net(causal=False), 1, 4)


def test_time_conditioning_changes_the_output_and_is_required():
    net = make_net(time_conditioning=True)
    torch.nn.init.normal_(net.blocks[0].ada.weight)  # zero-initialised: perturb to see t's effect
    x = rand_tokens(2, 8)
    assert not torch.allclose(net(x, torch.tensor([0.1, 0.1])), net(x, torch.tensor([0.9, 0.9])))
    with pytest.raises(ValueError, match="time-conditioned"):
        net(x)


def test_save_and_from_pretrained_round_trip_gives_identical_logits(tmp_path):
    gen = TextGenerator(make_net(tie_weights=False), TOK, schedule=LogLinearMasking(eps=1e-2))
    gen.save_pretrained(tmp_path / "m")
    back = TextGenerator.from_pretrained(tmp_path / "m",
                                         tokenizer=CharTokenizer.from_dir(tmp_path / "m" / inference.TOKENIZER_DIR))
    x = rand_tokens(2, 10)
    assert torch.equal(gen.net(x), back.net(x)) and back.kind == "diffusion"
    assert back.schedule.config() == {"name": "loglinear", "eps": 1e-2}
    assert back.tokenizer.alphabet == TOK.alphabet


# --------------------------------------------------------------------------------------------------
# sampling, prompts and infilling


def test_prefix_is_kept_and_seeds_reproduce_samples():
    gen = TextGenerator(make_net(), TOK)
    canvas = prompt_canvas(TOK, "to be", 20, V)
    for kw in ({}, {"block_size": 6}, {"method": "confidence"}, {"top_k": 5, "top_p": 0.9, "temperature": 0.7}):
        a = gen.fill(canvas, 4, steps=7, seed=3, **kw)
        assert torch.equal(a, gen.fill(canvas, 4, steps=7, seed=3, **kw)), kw
        assert not torch.equal(a, gen.fill(canvas, 4, steps=7, seed=4, **kw)), kw
        assert torch.equal(a[:, :5], canvas.tokens[:5].expand(4, -1)) and not torch.any(a == V), kw
    texts = gen.sample(3, length=20, steps=5, prompt="to be", seed=0, stop_at_eot=False)
    assert all(t.startswith("to be") and len(t) == 20 for t in texts)
    ar = TextGenerator(make_net(causal=True), TOK, "ar")
    assert ar.sample(2, length=16, prompt="to be", seed=1) == ar.sample(2, length=16, prompt="to be", seed=1)


def test_text_ends_at_the_first_generated_end_of_text():
    eot = TOK.eot_id
    assert inference.trim_at_eot([1, 2, eot, 3, eot], eot, 1, False) == [1, 2]
    assert inference.trim_at_eot([eot, eot, 4, 5, eot, 6], eot, 0, True) == [4, 5]  # an opening eot is skipped
    assert inference.trim_at_eot([eot, 7, eot, 8], eot, 1, False) == [eot, 7]  # only after the prompt


def test_infilling_never_changes_fixed_positions_and_forbids_eot_inside():
    canvas = parse_infill("the [MASK:4] of denmark, [MASK:3]", TOK, V)
    ids = canvas.tokens.tolist()
    assert ids == TOK.encode("the") + [V] * 4 + TOK.encode(" of denmark,") + [V] * 3  # space before a slot dropped
    assert canvas.no_eot.tolist() == [False] * 3 + [True] * 4 + [False] * 12 + [False] * 3
    assert canvas.cut_from == 19  # only the last slot may end the text
    # a net that strongly prefers end-of-text everywhere still cannot put one inside the first slot
    gen = TextGenerator(make_net(cls=EotLover), TOK)
    fixed = canvas.tokens != V
    for method in ("ancestral", "confidence"):
        out = gen.fill(canvas, 8, steps=3, method=method, seed=0)
        assert torch.equal(out[:, fixed], canvas.tokens[fixed].expand(8, -1))
        assert not torch.any(out == V) and not torch.any(out[:, canvas.no_eot] == TOK.eot_id)
        assert torch.all(out[:, 19:] == TOK.eot_id)  # the last slot may end the text, and here does
    assert gen.infill("the [MASK:2] of denmark, [MASK:3]", seed=0)[0].endswith("of denmark,")
    texts = gen.infill("the [MASK:4] of denmark", 2, seed=0)
    assert all(t.startswith("the") and t.endswith(" of denmark") for t in texts)


@pytest.mark.parametrize("template, match", [
    ("no slots here", "has no \\[MASK:N\\] slot"),
    ("the [MASK] of denmark", "unknown slot syntax"),
    ("the [MASK:0] of denmark", "unknown slot syntax"),
    ("the [mask:3] of denmark", "unknown slot syntax"),
    ("the [MASK:x] of denmark", "unknown slot syntax"),
    ("the [MASK:3 of denmark", "unknown slot syntax"),
    ("the [MASK:3] of Denmark", "cannot encode the infilling template: characters \\['D'\\]"),
])
def test_infill_template_errors(template, match):
    with pytest.raises(ValueError, match=match):
        parse_infill(template, TOK, V)


def test_generation_errors_are_clear():
    gen = TextGenerator(make_net(), TOK)
    with pytest.raises(ValueError, match="prompt is 30 tokens, which leaves nothing to generate in a sequence of 24"):
        gen.sample(prompt="a" * 30)  # default length: the model's training length, 24
    with pytest.raises(ValueError, match="cannot encode the prompt: characters \\['\u00e9'\\]"):
        gen.sample(prompt="caf\u00e9")
    for steps in (0, -3):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            gen.sample(steps=steps)
    with pytest.raises(ValueError, match="cannot infill"):
        TextGenerator(make_net(causal=True), TOK, "ar").infill("a [MASK:2] b")
    with pytest.raises(ValueError, match="one per block"):
        gen.sample(length=24, steps=2, block_size=4)
    with pytest.raises(ValueError, match="bidirectional"):
        TextGenerator(make_net(causal=True), TOK, "diffusion")


def test_diffusion_sampling_skips_the_network_when_nothing_changes():
    gen = TextGenerator(make_net(), TOK)
    canvas = prompt_canvas(TOK, "", 8, V)
    _, stats = gen.fill(canvas, 2, steps=64, seed=0, return_stats=True)
    assert stats.steps == 64 and stats.nfe <= 2 * 8 and stats.row_evals <= 2 * 8  # at most one call per reveal


# --------------------------------------------------------------------------------------------------
# data


def write_data(d: Path, train: np.ndarray, evals: np.ndarray) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    train.astype(np.uint16).tofile(d / "train.bin")
    for split in ("validation", "test"):
        evals.astype(np.uint16).tofile(d / f"{split}.bin")
    TOK.save(d / "tokenizer")
    return d


def test_windows_are_packed_slices_of_the_token_stream(tmp_path):
    stream = np.arange(1000) % 65000
    rw = RandomWindows(stream.astype(np.uint16), 16, seed=1)
    it = iter(rw)
    wins = [next(it) for _ in range(50)]
    for w in wins:  # every window is a contiguous slice of the stream
        assert w.dtype == torch.int64 and w.shape == (16,) and torch.all(w[1:] - w[:-1] == 1)
    assert len({int(w[0]) for w in wins}) > 40
    again = iter(RandomWindows(stream.astype(np.uint16), 16, seed=1))
    assert all(torch.equal(next(again), w) for w in wins)  # reproducible; a resume draws a new stream
    resumed = iter(RandomWindows(stream.astype(np.uint16), 16, seed=1, restarts=1))
    assert not all(torch.equal(next(resumed), w) for w in wins)
    cw = ContiguousWindows(stream, 16)
    assert len(cw) == 62 and torch.equal(cw[3], torch.arange(48, 64))
    sub = ContiguousWindows(stream, 16, max_windows=4)
    assert [int(sub[i][0]) for i in range(4)] == [0, 20 * 16, 41 * 16, 61 * 16]  # evenly spaced, fixed
    d = write_data(tmp_path / "d", np.full(100, 40), np.zeros(64))
    with pytest.raises(ValueError, match="token id 40, outside the model's vocabulary of 33"):
        TokenDataModule(str(d), seq_len=8, vocab_size=33).setup("fit")
    with pytest.raises(ValueError, match="no train.bin"):
        TokenDataModule(str(tmp_path), seq_len=8).setup("fit")
    with pytest.raises(ValueError, match="fewer than one window"):
        TokenDataModule(str(d), seq_len=128).setup("validate")


# --------------------------------------------------------------------------------------------------
# evaluation


def test_evaluation_figures():
    torch.manual_seed(0)
    windows = [rand_tokens(4, 12, seed=s) for s in range(2)]
    diff, ar = make_net(), make_net(causal=True)
    bound = diffusion_bound(diff, windows, n_t=3, seed=0)
    assert bound == diffusion_bound(diff, windows, n_t=3, seed=0) and bound["tokens"] == 96 and bound["se"] > 0
    exact = ar_perplexity(ar, windows)
    by_hand = torch.cat([ar_nll(ar, w, V, reduce=False) for w in windows]).mean()
    assert math.isclose(exact["nll"], float(by_hand), rel_tol=1e-6)
    res = compare_perplexity(diff, ar, windows, n_t=2)
    assert math.isclose(res["gap_percent"], 100 * (res["diffusion"]["ppl"] / res["ar"]["ppl"] - 1))
    # an untrained model is near uniform over the 32 real tokens: both about log 32
    assert abs(exact["nll"] - math.log(V)) < 0.1 and abs(bound["nll"] - math.log(V)) < 0.5
    assert math.isclose(unigram_entropy(torch.tensor([[0, 0, 1, 1], [3, 3, 3, 3]])), math.log(2) / 2)
    x = torch.cat(windows)
    assert math.isclose(generative_perplexity(ar, x, batch_size=3), math.exp(exact["nll"]), rel_tol=1e-6)
    rows = sample_quality(TextGenerator(diff, TOK), TextGenerator(ar, TOK, "ar"), [2, 8], n=2, length=12)
    assert [r["steps"] for r in rows] == [2, 8, 12] and all(r["tokens_per_s"] > 0 for r in rows)


def test_distinct_ngrams_counts_repeats_within_each_sample():
    # (1,2) (2,1) (1,2) (2,1): 2 of 4 distinct; 0 1 2 3: all distinct; the mean over samples
    assert math.isclose(distinct_ngrams(torch.tensor([[1, 2, 1, 2, 1], [0, 1, 2, 3, 4]]), 2), (0.5 + 1.0) / 2)
    assert distinct_ngrams(torch.tensor([[5, 5, 5, 5]]), 1) == 0.25
    with pytest.raises(ValueError, match="at least 3 tokens"):
        distinct_ngrams(torch.tensor([[5, 5]]), 3)
    with pytest.raises(ValueError):
        distinct_ngrams(torch.tensor([[5, 5]]), 0)


def test_compare_samplers_passes_each_setting_to_the_sampler():
    diff, ar = TextGenerator(make_net(), TOK), TextGenerator(make_net(causal=True), TOK, "ar")
    reference = rand_tokens(3, 12, seed=5)
    settings = [{}, {"method": "confidence", "top_k": 1}, {"temperature": 0.5, "top_p": 0.9, "block_size": 4}]
    rows = compare_samplers(diff, ar, 4, reference, settings=settings, n=3, seed=2)
    assert [r["sampler"] for r in rows] == [
        "diffusion (ancestral)", "diffusion (confidence, top-k 1)",
        "diffusion (ancestral, T=0.5, top-p 0.9, blocks of 4)", "AR twin (KV cache)", "real text"]
    # each row's figures are those of the samples its setting draws from the same seed
    canvas = prompt_canvas(TOK, None, 12, diff.net.mask_id)
    for kw, row in zip(settings, rows):
        tokens = diff.fill(canvas, 3, steps=4, seed=2, **kw)
        assert math.isclose(row["entropy"], unigram_entropy(tokens))
        assert math.isclose(row["distinct4"], distinct_ngrams(tokens, 4))
        assert math.isclose(row["gen_ppl"], generative_perplexity(ar.net, tokens), rel_tol=1e-9)
    assert rows[0]["entropy"] != rows[1]["entropy"]  # the greedy confidence setting is not the plain sampler
    assert rows[-1] == {"sampler": "real text", **reference_quality(ar.net, reference, TOK)}
    assert rows[-2]["nfe"] == 12 and rows[0]["nfe"] <= 4
    assert sampler_name() == "ancestral" and {} in SAMPLER_SETTINGS


def test_bound_uses_masked_positions_only_and_per_character_figures():
    diff, ar = make_net(dtype=torch.float64), make_net(causal=True)
    windows = [rand_tokens(4, 12, seed=s) for s in range(2)]
    bound = diffusion_bound(diff, windows, n_t=2, seed=7, t_min=0.05)
    g = torch.Generator().manual_seed(7)  # the same draws through the full-logits path, by hand
    total = 0.0
    for x in windows:
        for _ in range(2):
            t = sample_t(4, "stratified", t_min=0.05, generator=g)
            assert bool((t >= 0.05).all())
            total += float(masked_nelbo(lambda z, tt: diff(z), x, LogLinearMasking(), V, t=t, generator=g))
    assert math.isclose(bound["nll"], total / 4, rel_tol=1e-9)
    # per character: 96 tokens standing for 48 characters double every per-token nats figure
    res = compare_perplexity(diff, ar, windows, n_t=2, characters=48,
                             unigram={"nll": 3.0, "ppl": math.exp(3.0), "tokens": 96})
    for key in ("diffusion", "ar", "unigram"):
        r = res[key]
        assert math.isclose(r["nats_per_char"], 2 * r["nll"]) and math.isclose(r["bits_per_char"],
                                                                                  2 * r["nll"] / math.log(2))
    assert math.isclose(res["gap_percent_char"],
                        100 * (math.exp(2 * (res["diffusion"]["nll"] - res["ar"]["nll"])) - 1), rel_tol=1e-9)
    # the unigram floor: add-one smoothed training frequencies
    train = torch.tensor([0, 0, 0, 1])
    uni = unigram_nll(train, [torch.tensor([[0, 1]])], vocab_size=3)
    assert math.isclose(uni["nll"], -(math.log(4 / 7) + math.log(2 / 7)) / 2)
    # characters of windows: the test tokenizer is one character per token, end-of-text one character
    assert window_characters(TOK, [torch.tensor([[0, 1, TOK.eot_id, 2]])]) == 4


# --------------------------------------------------------------------------------------------------
# recipes, training, export and the CLI


def test_twin_recipes_differ_only_in_the_model():
    # the diffusion module's own options (schedule, times, training loss): everything else must match the twin's
    diffusion_only = set(inspect.signature(MaskedDiffusionModule).parameters) - \
        set(inspect.signature(ARModule).parameters)
    assert {"schedule", "time_sampling", "t_min", "train_t"} <= diffusion_only
    for size in ("tiny", "small", "tiny_char", "tiny_bpe"):
        a = yaml.safe_load((RECIPES / "textdiff" / f"{size}.yaml").read_text())
        b = yaml.safe_load((RECIPES / "textdiff" / f"{size}_ar.yaml").read_text())
        assert a["data"] == b["data"] and a["trainer"] == b["trainer"] and a["seed_everything"] == b["seed_everything"]
        ma, mb = a["model"]["init_args"], b["model"]["init_args"]
        assert {**ma["net"]["init_args"], "causal": True} == mb["net"]["init_args"]
        assert {k: v for k, v in ma.items() if k != "net" and k not in diffusion_only} == \
            {k: v for k, v in mb.items() if k != "net"}
    # the block recipe is the whole-window one with blocks (and its own training times)
    for family in ("tiny_char", "tiny_bpe"):
        a = yaml.safe_load((RECIPES / "textdiff" / f"{family}.yaml").read_text())
        b = yaml.safe_load((RECIPES / "textdiff" / f"{family}_block.yaml").read_text())
        assert a["data"] == b["data"] and a["trainer"] == b["trainer"]
        ma, mb = a["model"]["init_args"], b["model"]["init_args"]
        assert {**ma["net"]["init_args"], "block_size": mb["net"]["init_args"]["block_size"]} == mb["net"]["init_args"]
        assert {k: v for k, v in ma.items() if k not in ("net", "train_t")} == \
            {k: v for k, v in mb.items() if k not in ("net", "train_t")}
    with torch.device("meta"):  # count parameters without allocating them
        small = TransformerNet(**yaml.safe_load((RECIPES / "textdiff" / "small.yaml").read_text())
                               ["model"]["init_args"]["net"]["init_args"])
    assert 100e6 < small.num_parameters() < 130e6


def fit_args(recipe: str, data: Path, root: Path, steps: int, *extra: str) -> list[str]:
    return ["-c", str(RECIPES / "_base" / "trainer.yaml"), "-c", str(RECIPES / "textdiff" / f"{recipe}.yaml"),
            "--data.data_dir", str(data), "--data.seq_len", "32", "--data.batch_size", "8",
            "--data.eval_batch_size", "16", "--data.vocab_size", str(V),
            "--model.init_args.net.init_args.vocab_size", str(V), "--model.init_args.warmup_steps", "5",
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
            "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.num_sanity_val_steps", "0", *extra]


@pytest.fixture(scope="module")
def overfit_data(tmp_path_factory) -> Path:
    """One random window of 32 tokens repeated: training sees only it, evaluation 16 copies of it."""
    seq = np.random.default_rng(0).integers(0, V - 1, 32)
    return write_data(tmp_path_factory.mktemp("data"), seq, np.tile(seq, 16))


@pytest.mark.parametrize("recipe, factor", [("tiny", 0.85), ("tiny_ar", 0.3)])
def test_tiny_recipe_trains_and_overfits_one_batch(recipe, factor, overfit_data, tmp_path):
    torch.set_num_threads(1)
    app = cli.build_cli(fit_args(recipe, overfit_data, tmp_path, 60, "--trainer.callbacks", "[]"), run=False)
    assert isinstance(app.model, MaskedDiffusionModule if recipe == "tiny" else ARModule)
    before = app.trainer.validate(app.model, app.datamodule, verbose=False)[0]["val/loss"]
    app.trainer.fit(app.model, app.datamodule)
    after = float(app.trainer.callback_metrics["val/loss"])
    # deterministic (seeded) runs: diffusion ~3.2 -> ~2.6 (a bidirectional net without absolute positions
    # cannot memorise what to put under an all-mask input), AR ~3.6 -> ~0.02
    assert after < factor * before, (before, after)


def test_checkpoint_resume_export_and_cli(overfit_data, tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    app = cli.build_cli(fit_args("tiny", overfit_data, tmp_path, 3), run=False)
    app.trainer.fit(app.model, app.datamodule)
    last = next(tmp_path.rglob("last.ckpt"))
    # resume: training continues from step 3, the EMA comes back, and the data stream is a fresh one
    app2 = cli.build_cli(fit_args("tiny", overfit_data, tmp_path / "b", 5), run=False)
    app2.trainer.fit(app2.model, app2.datamodule, ckpt_path=str(last))
    assert app2.trainer.global_step == 5 and app2.datamodule.restarts == 1 and app2.model.ema.num_updates == 5

    # export: the EMA weights, the schedule and the run's tokenizer, loadable with from_pretrained
    monkeypatch.setattr(inference, "load_tokenizer", CharTokenizer.from_dir)
    assert cli.main(["export", str(last), str(tmp_path / "model")]) == 0
    gen = TextGenerator.from_pretrained(tmp_path / "model")
    with app.model.ema_weights():
        x = rand_tokens(2, 32)
        assert torch.equal(gen.net(x), app.model.net.eval()(x))
    assert gen.kind == "diffusion" and gen.net.max_len == 128  # the recipe's net, trained here on windows of 32

    capsys.readouterr()
    assert cli.main(["sample", "--model", str(tmp_path / "model"), "--steps", "4", "--length", "16", "--n", "2",
                     "--prompt", "to be", "--seed", "0", "--json", "--device", "cpu"]) == 0
    texts = json.loads(capsys.readouterr().out)
    assert len(texts) == 2 and all(t.startswith("to be") for t in texts)
    assert cli.main(["infill", "--model", str(tmp_path / "model"), "the [MASK:5] of denmark", "--seed", "1",
                     "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("the") and out.endswith(" of denmark")
    for argv, message in (
            (["sample", "--steps", "0"], "steps must be a positive integer"),
            (["sample", "--prompt", "x" * 200], "the prompt is 200 tokens"),
            (["sample", "--prompt", "Hamlet"], "cannot encode the prompt"),
            (["infill", "no slot"], "has no [MASK:N] slot"),
            (["infill", "a [MASK] b"], "unknown slot syntax")):
        assert cli.main([*argv, "--model", str(tmp_path / "model"), "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err


def test_nelbo_at_masked_positions_only_equals_the_full_computation():
    """``logits_at`` (output layer at the masked positions only) gives the same loss and gradients."""
    net = make_net(dtype=torch.float64)
    module = MaskedDiffusionModule(net, ema_decay=None)
    x0 = rand_tokens(3, 12, seed=5)
    t = torch.tensor([0.2, 0.6, 0.95], dtype=torch.float64)
    full = masked_nelbo(module.logits_fn, x0, module.schedule, V, t=t, generator=torch.Generator().manual_seed(3))
    g_full = torch.autograd.grad(full, list(net.parameters()), allow_unused=True)
    fast = masked_nelbo(module.logits_fn, x0, module.schedule, V, t=t, generator=torch.Generator().manual_seed(3),
                        logits_at=module.logits_at)
    g_fast = torch.autograd.grad(fast, list(net.parameters()), allow_unused=True)
    assert torch.allclose(full, fast, rtol=1e-12)
    for a, b in zip(g_full, g_fast):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    per_example = [masked_nelbo(module.logits_fn, x0, module.schedule, V, t=t, reduce=False,
                                generator=torch.Generator().manual_seed(3), **kw) for kw in ({}, {"logits_at":
                                                                                           module.logits_at})]
    assert per_example[0].shape == (3,) and torch.allclose(per_example[0], per_example[1], rtol=1e-12)
    g = torch.Generator().manual_seed(9)  # training draws t in [t_min, 1], then the masks, from one generator
    t_train = sample_t(3, "stratified", t_min=module.t_min, generator=g)
    assert bool((t_train >= module.t_min).all())
    assert torch.allclose(module.compute_loss(x0, generator=torch.Generator().manual_seed(9)),
                          masked_nelbo(module.logits_fn, x0, module.schedule, V, t=t_train, generator=g), rtol=1e-12)
    with pytest.raises(ValueError, match="one row per selected position"):
        masked_nelbo(module.logits_fn, x0, module.schedule, V, t=t, logits_at=lambda z, tt, sel: net(z))
    with pytest.raises(ValueError, match="positions must be a bool mask"):
        net(x0, positions=torch.ones(3, 5, dtype=torch.bool))


def test_masked_mean_training_loss():
    """"masked_mean" averages each window's masked cross-entropy over its masked tokens (training only)."""
    net = make_net(dtype=torch.float64)
    module = MaskedDiffusionModule(net, ema_decay=None, train_loss="masked_mean").train()
    x0 = rand_tokens(3, 12, seed=4)
    g = torch.Generator().manual_seed(2)
    t = sample_t(3, "stratified", t_min=module.t_min, generator=g)
    alpha, _ = module.schedule(t.double())
    z = mask_tokens(x0, alpha, V, generator=g)
    logp = subs_log_probs(net(z), z, V)
    nll = -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    masked = z == V
    by_hand = torch.stack([nll[i][masked[i]].mean() if masked[i].any() else nll.new_zeros(()) for i in range(3)])
    loss = module.compute_loss(x0, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(loss, by_hand.mean(), rtol=1e-10)
    module.eval()  # validation reports the NELBO whatever the training loss
    assert torch.allclose(module.compute_loss(x0, generator=torch.Generator().manual_seed(2)),
                          MaskedDiffusionModule(net, ema_decay=None).compute_loss(
                              x0, generator=torch.Generator().manual_seed(2)), rtol=1e-12)
    with pytest.raises(ValueError, match="train_loss must be"):
        MaskedDiffusionModule(make_net(), train_loss="mse")


def test_evaluate_pair_wants_the_diffusion_model_first():
    from textdiff.evaluate import evaluate_pair

    diff, ar = TextGenerator(make_net(), TOK), TextGenerator(make_net(causal=True), TOK, "ar")
    with pytest.raises(ValueError, match="masked diffusion model first"):
        evaluate_pair(ar, diff, None)


def test_evaluate_pair_sampler_options_and_comparison(tmp_path, monkeypatch, capsys):
    from textdiff.evaluate import evaluate_pair

    data = write_data(tmp_path / "d", rand_tokens(1, 200, seed=1).numpy()[0], rand_tokens(1, 96, seed=2).numpy()[0])
    diff, ar = TextGenerator(make_net(), TOK), TextGenerator(make_net(causal=True), TOK, "ar")
    kw = {"split": "validation", "n_t": 1, "samples": 2, "steps_list": [3], "seed": 4}
    greedy = evaluate_pair(diff, ar, str(data), sampler={"method": "confidence", "top_k": 1}, compare=True, **kw)
    plain = evaluate_pair(diff, ar, str(data), **kw)
    assert "samplers" not in plain and greedy["samples"][0]["sampler"] == "diffusion (confidence, top-k 1)"
    assert greedy["samples"][0]["entropy"] != plain["samples"][0]["entropy"]  # the options reach the sampler
    rows = greedy["samplers"]
    assert len(rows) == len(SAMPLER_SETTINGS) + 2 and rows[0] == {**plain["samples"][0], "seconds": rows[0]["seconds"],
                                                                  "tokens_per_s": rows[0]["tokens_per_s"]}
    assert rows[-1] == plain["samples"][-1] and rows[-1]["sampler"] == "real text" and 0 < rows[-1]["distinct4"] <= 1
    # the same through the command line
    monkeypatch.setattr(inference, "load_tokenizer", CharTokenizer.from_dir)
    diff.save_pretrained(tmp_path / "m"), ar.save_pretrained(tmp_path / "a")
    assert cli.main(["evaluate", "--model", str(tmp_path / "m"), "--ar", str(tmp_path / "a"), "--data", str(data),
                     "--split", "validation", "--n-t", "1", "--samples", "2", "--steps", "3", "--seed", "4",
                     "--method", "confidence", "--top-k", "1", "--compare-samplers", "--device", "cpu",
                     "--json", str(tmp_path / "e.json")]) == 0
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["samples"][0]["entropy"] == greedy["samples"][0]["entropy"] and len(out["samplers"]) == len(rows)
    assert "distinct4" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# block diffusion (BD3-LM)


def test_block_net_sees_its_own_noisy_block_and_only_the_clean_past():
    net = make_net(dtype=torch.float64, block_size=4)
    x0, z = rand_tokens(2, 16, seed=1), rand_tokens(2, 16, seed=2)
    base = net(z, clean=x0)
    for pos in range(16):
        b = pos // 4
        z2 = z.clone()
        z2[:, pos] = (z2[:, pos] + 1) % V
        changed = ~torch.isclose(net(z2, clean=x0), base).all(-1).all(0)  # (L,) positions whose logits moved
        assert changed.nonzero().squeeze(1).tolist() == list(range(4 * b, 4 * b + 4))  # its block only
        x2 = x0.clone()
        x2[:, pos] = (x2[:, pos] + 1) % V
        changed = ~torch.isclose(net(z, clean=x2), base).all(-1).all(0)
        assert changed.nonzero().squeeze(1).tolist() == list(range(4 * b + 4, 16))  # every later block
    # one block as long as the window is the plain bidirectional (MDLM) net with the same weights
    whole, plain = make_net(dtype=torch.float64, block_size=16), make_net(dtype=torch.float64)
    assert torch.allclose(whole(z, clean=x0), plain(z), atol=1e-12)
    with pytest.raises(ValueError, match="causal=False"):
        make_net(causal=True, block_size=4)
    with pytest.raises(ValueError, match="block diffusion"):
        plain(z, clean=x0)


def test_block_size_one_bound_is_the_nets_own_autoregressive_likelihood():
    # Blocks of one token: the block NELBO's expectation is (1 - eps) * sum_l -log p(x_l | x_<l), each
    # term read from the all-masked noisy stream beside the clean past. A per-window time (the MDLM
    # bound) or a wrong mask would give another value.
    net = make_net(dtype=torch.float64, block_size=1)
    x0 = rand_tokens(4, 12, seed=5)
    with torch.no_grad():
        logp = torch.log_softmax(net(torch.full_like(x0, V), clean=x0)[..., :V], -1)
    exact = -logp.gather(-1, x0[..., None])[..., 0].mean() * (1 - 1e-3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([diffusion_nelbo(net, x0, LogLinearMasking(), generator=g) for _ in range(2000)])
    se = float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean()) - float(exact)) < 4 * se, (float(draws.mean()), float(exact), se)


def test_block_model_trains_evaluates_and_samples_block_by_block(tmp_path):
    net = make_net(block_size=8)
    module = MaskedDiffusionModule(net, ema_decay=None)
    x0 = rand_tokens(4, 24, seed=6)
    loss = module.compute_loss(x0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and net.embed.weight.grad.abs().sum() > 0
    res = diffusion_bound(net, [x0], n_t=2)
    assert math.isfinite(res["nll"]) and res["tokens"] == x0.numel()
    gen = TextGenerator(net, TOK, "diffusion")
    gen2 = TextGenerator.from_pretrained(gen.save_pretrained(tmp_path / "m"), tokenizer=TOK)
    assert gen2.net.block_size == 8
    # sampling fills the blocks left to right: the first block is done before the second one starts
    canvas = prompt_canvas(TOK, "to be", 24, net.mask_id)
    seen = []
    out = gen2.fill(canvas, 3, steps=12, seed=0, return_stats=True)[0]
    assert torch.equal(out[:, :5], canvas.tokens[:5].expand(3, -1)) and not (out == net.mask_id).any()
    sample_masked_blocks(gen2.logits_fn(), canvas.tokens[None].clone(), 12, gen2.schedule, net.mask_id,
                         block_size=8, callback=lambda info: seen.append((info["block"], info["z"].clone())))
    for block, z in seen:
        assert not (z[:, :8 * block] == net.mask_id).any() and (z[:, 8 * (block + 1):] == net.mask_id).all()
    assert torch.equal(gen2.fill(canvas, 2, steps=12, seed=1), gen2.fill(canvas, 2, steps=12, seed=1,
                                                                           block_size=8))
    with pytest.raises(ValueError, match="blocks of 8"):
        gen2.fill(canvas, 1, steps=12, block_size=5)


def test_train_t_restricts_training_times_but_not_the_reported_bound():
    net = make_net()
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(float((args[0] == m.mask_id).float().mean())))
    module = MaskedDiffusionModule(net, ema_decay=None, train_t=(0.95, 1.0))
    x0 = rand_tokens(16, 24, seed=8)
    module.train()
    module.compute_loss(x0, generator=torch.Generator().manual_seed(0))
    module.eval()
    module.compute_loss(x0, generator=torch.Generator().manual_seed(0))
    assert seen[0] > 0.9 and 0.3 < seen[1] < 0.7  # mask rate: training in [0.95, 1], evaluation over [1e-3, 1]
    with pytest.raises(ValueError, match="train_t"):
        MaskedDiffusionModule(make_net(), train_t=(0.5, 0.4))
