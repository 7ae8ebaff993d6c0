"""The features stage: FMA MP3s -> 128x128 log-mel images in HDF5 shards.

Entry points: ``python -m preprocess {features,finalize,verify,download,slurm}``
and ``python -m preprocess.synth`` (a generated FMA-shaped dataset).
"""
