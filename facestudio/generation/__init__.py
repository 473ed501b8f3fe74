"""Stage 2 in use: generation of expressive faces, synthetic libraries, expression evaluation."""
