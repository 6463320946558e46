"""The main job: ``diffcore demo --out runs/demo`` builds the ``small`` data sets, trains tiny models of all three
kinds, samples from them, evaluates them and writes a static HTML report (``<out>/report/index.html``).

Stages (each one's output lives in ``<out>/<stage>/``, and a stage whose inputs have not changed is reused
when the command runs again; ``--fresh`` redoes them):

    data      speech, sounds, text (``diffcore.data.build``; in the data cache, shared with other runs)
    vocoder   WaveGrad, recipes/vocoder/tiny.yaml, then a searched 6-step schedule (``--vocoder DIR``:
              a copy of a vocoder trained elsewhere instead)
    vae       mel VAE, recipes/t2s/vae_tiny.yaml, exported with its measured latent scale
    t2s       latent diffusion, recipes/t2s/ldm_tiny.yaml, exported as a pipeline with the vocoder
    lm, lm_ar masked diffusion LM and its autoregressive twin, recipes/textdiff/tiny{,_ar}.yaml
    eval_*    the vocoder, text-to-sound and text evaluations (the same code as the ``evaluate`` commands)
    report    index.html + media/ (WAV, PNG) + results.json

This package orchestrates the model packages (``audiodiff``, ``textdiff``), which it imports lazily, the way
``diffcore.data`` reaches their data builders.
"""

from .pipeline import PROFILES, DemoError, Profile, run_demo

__all__ = ["PROFILES", "DemoError", "Profile", "run_demo"]
