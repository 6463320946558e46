"""textdiff: the masked diffusion language model built on diffcore.

- ``textdiff.model``: ``TransformerNet``, one network for the bidirectional denoiser and its causal
  autoregressive twin (RoPE, scaled_dot_product_attention, tied embeddings, optional t conditioning).
- ``textdiff.module``: ``MaskedDiffusionModule`` (MDLM NELBO), ``ARModule`` (next-token loss) and
  ``TokenDataModule`` (packed windows of the uint16 token files).
- ``textdiff.inference``: ``TextGenerator.from_pretrained(dir)`` with ``sample`` / ``infill``.
- ``textdiff.evaluate``: the NELBO bound beside the AR twin's perplexity, generative perplexity,
  unigram entropy.
- ``textdiff.tokenizer``: GPT-2 BPE, and small vocabularies learnt from the user's corpus (character, byte,
  byte-level BPE of N ids) behind one interface; ``load_tokenizer(dir)`` reads whichever was saved.
- ``textdiff.data``: the built-in text set, loaders of your own text, ``tokenize_corpus`` (token files with
  a corpus-trained tokenizer) and the packed token windows.
- ``textdiff.cli``: the ``textdiff`` command (fit / validate / test / tokenize / sample / infill / export /
  evaluate).
"""
