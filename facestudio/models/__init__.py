"""Stage 1 and shared model infrastructure: configs, autodecoder, renderer, runs."""
