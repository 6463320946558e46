"""diffjob: the orchestration layer above the systems; the only package that imports both ``audiodiff``
and ``textdiff``. It holds the main job, ``diffcore demo --out runs/demo``, which builds the ``small`` data
sets, trains tiny models of all three kinds, samples from them, evaluates them and writes a static HTML
report (``<out>/report/index.html``). Arrows point down: diffjob -> systems -> diffcore.

Stages (``diffjob.demo.STAGES``; each one's output lives in ``<out>/<stage>/``, and a stage whose inputs
have not changed is reused when the command runs again; ``--fresh`` redoes them; two run side by side,
each in its own process, whenever their inputs are ready, ``--jobs``):

    data         speech, sounds, text (``diffcore.data.build``; in the data cache, shared with other runs)
    vocoder      WaveGrad, recipes/vocoder/tiny.yaml, then a searched 6-step schedule (``--vocoder DIR``:
                 a copy of a vocoder trained elsewhere instead)
    vae          mel VAE, recipes/t2s/vae_tiny.yaml, exported with its measured latent scale
    t2s_cache    every clip's VAE posterior and caption states, encoded once for the two stages below
    t2s          latent diffusion on all times, recipes/t2s/ldm_tiny.yaml, also exported alone as a pipeline
    t2s_high     its high-noise expert, + recipes/t2s/ldm_tiny_high.yaml (times 0.8..1 only), beside it
    t2s_experts  the pipeline evaluated: the expert above t = 0.85, the all-times net below (audio via
                 Griffin-Lim or the vocoder, whichever measured better)
    text_tokens  byte-level BPE tokens (8,192 ids, learnt from its train split) of the text set's Shakespeare
    lm, lm_block, lm_ar  masked diffusion LM, block diffusion LM and their autoregressive twin,
                 recipes/textdiff/tiny_bpe{,_block,_ar}.yaml
    eval_*       the vocoder, text-to-sound and text evaluations (the same code as the ``evaluate`` commands)
    report       index.html + media/ (WAV, PNG) + results.json

The recipes ship inside this package (``diffjob/recipes`` is the project's ``recipes/`` folder).
``diffjob.stages`` is the resumable-stage bookkeeping, ``diffjob.demo`` the stages themselves,
``diffjob.report`` the page, ``diffjob.cli`` the ``demo`` command (registered with ``diffcore``'s command
line through the ``diffcore.commands`` entry-point group).
"""

from .stages import DemoError

__all__ = ["DemoError"]
