"""The generated mini-FMA: a small dataset shaped exactly like the Free Music Archive.

    python -m preprocess.synth --out data/mini-fma --tracks 400 --seed 0

A self-contained part of the features side (nothing else in ``preprocess`` imports it):

``generator``  the plan of every track and the driver (``generate``, the command line)
``meta``       the genre tree and FMA-shaped ``tracks.csv`` / ``genres.csv`` rows
``audio``      genre styles, synthesis, mastering, MP3 encoding, ID3 tags
``zipped``     FMA-shaped zips of a generated tree (``python -m preprocess.synth.zipped``)
"""
