"""The training side: shard Dataset, models, training loop, evaluation.

Reads shard sets through the ``shards`` package only; never imports librosa.
Entry point: ``python -m train {fit,test,predict,export}``; the module map is in docs/development.md.
"""
