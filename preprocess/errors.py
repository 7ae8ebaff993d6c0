"""The features side's run-level error, and where its other user-facing errors live.

Every error a user can fix is a :class:`shards.errors.FmaGenreError`: the commands
(``python -m preprocess features | finalize | verify | download | slurm``) report it in one
line, ``error: ...``, and exit 2 (see :mod:`shards.cli`). On this side they are

- :class:`FeaturesError` (here): the features run cannot go on (no dataset, bad options,
  a shard set made with other settings, most tracks failing);
- ``preprocess.metadata.MetadataError``: tracks.csv missing or not shaped like FMA's (or, for
  ``--target genres_all``, a ``genres_all`` cell that does not parse or names an unknown genre);
- ``preprocess.genres.GenresError``: genres.csv missing, malformed or not a tree;
- ``preprocess.audio_source.AudioSourceError``: no audio tree or zip, or a damaged zip;
- ``preprocess.download.DownloadError`` and its kinds: a download, check or unpack failed;
- ``preprocess.slurm.SlurmError``: sbatch/squeue failed or the queue is busy;
- ``shards.errors.ShardError``: a shard, plan or manifest is missing or damaged;
- :class:`SynthError` (here): bad arguments to the mini-FMA generator or its zip writer.

Not command errors: ``preprocess.audio.TrackFailure`` (and ``preprocess.recipe.TooShortError``,
``preprocess.audio_source.MemberError``) is one track's problem. The run records the track in
its shard with the reason and goes on; the summary counts the reasons.
"""

from shards.errors import FmaGenreError


class FeaturesError(FmaGenreError):
    """The features run cannot go on (missing dataset, conflicting output, most tracks failing)."""


class SynthError(FmaGenreError, ValueError):
    """The generated mini-FMA: a bad --out (holds data it did not make), --tracks, --seed or folder to zip."""
