"""The built-in text data set (:mod:`textdiff.data.text`) and loaders for users' own text
(:mod:`textdiff.data.loaders`)."""
