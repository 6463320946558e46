"""Built-in audio data sets (speech, sounds) and loaders for users' own audio."""
