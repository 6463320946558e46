"""textdiff: the masked diffusion language model built on diffcore.

- ``textdiff.model``: ``TransformerNet``, one network for the bidirectional denoiser and its causal
  autoregressive twin (RoPE, scaled_dot_product_attention, tied embeddings, optional t conditioning).
- ``textdiff.module``: ``MaskedDiffusionModule`` (MDLM NELBO), ``ARModule`` (next-token loss) and
  ``TokenDataModule`` (packed windows of the uint16 token files).
- ``textdiff.inference``: ``TextGenerator.from_pretrained(dir)`` with ``sample`` / ``infill``.
- ``textdiff.evaluate``: the NELBO bound beside the AR twin's perplexity, generative perplexity,
  unigram entropy.
- ``textdiff.tokenizer``, ``textdiff.data``: GPT-2 BPE, the built-in text set and loaders of your own text.
- ``textdiff.cli``: the ``textdiff`` command (fit / validate / test / sample / infill / export / evaluate).
"""
