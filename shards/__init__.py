"""The HDF5 shard format, defined once and imported by both sides.

The features stage (``preprocess``) writes shards with :func:`write_shard` and a
``manifest.json`` with :func:`write_manifest`; the training side (``train``) reads
them with :func:`read_shard` / :func:`read_manifest` and memory-maps the images
with :func:`mel_memmap`. This package depends on numpy and h5py only.

It also holds what every command shares: the user-facing error root
:class:`FmaGenreError` (``shards.errors``) and the command-line plumbing
(``shards.cli``: logging options, exit codes, one-line errors).

A shard set is a folder::

    train-00000-of-00050.h5        one shard: N log-mel images of one split
    ...
    validation-00000-of-00006.h5
    test-00000-of-00006.h5
    manifest.json                  written last, once every shard exists

Each shard file holds

``mel``         float32 (N, 128, 128), chunked one image per chunk, allocated
                early and uncompressed by default, so the chunks lie in order with
                no gaps and one ``np.memmap`` covers the dataset.
``label``       int64 (N,), class index into ``class_names``.
``track_id``    int64 (N,), FMA track id, sorted ascending.
``failed_track_id`` int64 (M,) and ``failed_reason`` str (M,): tracks assigned
                to this shard that could not be turned into an image.
``padded_track_id`` int64 (P,) and ``padded_seconds`` float64 (P,): written tracks
                whose clip was shorter than the recipe's duration (padded with silence),
                with their real length (absent in older shards: read as none).

and attributes (JSON strings where structured): ``format_version``, ``name``,
``split``, ``shard_index``, ``num_shards``, ``subset``, ``recipe``,
``class_names``, ``versions``, ``checksum`` (see :func:`content_checksum`).

Optional per-track datasets (format_version 2)
----------------------------------------------
A shard may also hold extra per-track datasets, each declared once in :data:`EXTRAS` (its
dtype, dimensions and what describes it) and laid out like ``mel`` (one track per chunk,
memory-mappable). The attribute ``extras`` (JSON) names them, with what each is:

``mel_fine``    float16 (N, 128, T): a finer log-mel image of the same excerpt, from the same
                decode; ``extras["mel_fine"]["recipe"]`` is its recipe.
``genres``      uint8 (N, G), 0/1: every genre of FMA's taxonomy the track carries
                (``genres_all``); ``extras["genres"]["genre_table"]`` lists the G genres
                (``id``, ``title``, ``parent``, ``top_level``) in column order. In such a shard
                ``label`` is :data:`NO_LABEL` (-1) for a track without a top-level genre.

Such a shard has ``format_version`` 2, and its checksum also covers the extras. A shard without
extras is the first format's, byte for byte; the manifest of a set with extras has
``format_version`` 2 and the same ``extras`` object.
"""

from shards.atomic import atomic_path, atomic_write_text
from shards.errors import FmaGenreError, ShardError
from shards.format import (
    EXTRAS,
    EXTRAS_FORMAT_VERSION,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    MANIFEST_NAME,
    NO_LABEL,
    SPLITS,
    Layout,
    ShardContents,
    content_checksum,
    data_layout,
    lowest_label,
    mel_memmap,
    memmap,
    parse_shard_name,
    read_extra,
    read_shard,
    shard_name,
    write_shard,
)
from shards.manifest import read_manifest, shard_entries, write_manifest

__all__ = [
    "EXTRAS",
    "EXTRAS_FORMAT_VERSION",
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "NO_LABEL",
    "MANIFEST_NAME",
    "SPLITS",
    "FmaGenreError",
    "ShardContents",
    "ShardError",
    "atomic_path",
    "atomic_write_text",
    "content_checksum",
    "Layout",
    "data_layout",
    "lowest_label",
    "mel_memmap",
    "memmap",
    "parse_shard_name",
    "read_manifest",
    "read_extra",
    "read_shard",
    "shard_name",
    "shard_entries",
    "write_manifest",
    "write_shard",
]
