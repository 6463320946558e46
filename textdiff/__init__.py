"""textdiff: the masked diffusion language model built on diffcore.

- ``textdiff.model``: ``TransformerNet``, one network for the bidirectional denoiser and its causal
  autoregressive twin (RoPE, scaled_dot_product_attention, tied embeddings, optional t conditioning).
- ``textdiff.modules``: ``MaskedDiffusionModule`` (MDLM NELBO) and ``ARModule`` (next-token loss).
- ``textdiff.datamodule``: ``TokenDataModule``, packed windows of the uint16 token files.
- ``textdiff.sampling``: ``TextGenerator.from_pretrained(dir)`` with ``sample`` / ``infill``.
- ``textdiff.evaluate``: the NELBO bound beside the AR twin's perplexity, generative perplexity,
  unigram entropy.
- ``textdiff.tokenizer``, ``textdiff.data``, ``textdiff.loaders``: GPT-2 BPE and the token data sets.
- ``textdiff.cli``: the ``textdiff`` command (fit / validate / test / sample / infill / export / evaluate).
"""
