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
"""

from shards.atomic import atomic_path, atomic_write_text
from shards.errors import FmaGenreError, ShardError
from shards.format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SPLITS,
    Layout,
    ShardContents,
    content_checksum,
    data_layout,
    mel_memmap,
    memmap,
    parse_shard_name,
    read_shard,
    shard_name,
    write_shard,
)
from shards.manifest import read_manifest, shard_entries, write_manifest

__all__ = [
    "FORMAT_VERSION",
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
    "mel_memmap",
    "memmap",
    "parse_shard_name",
    "read_manifest",
    "read_shard",
    "shard_name",
    "shard_entries",
    "write_manifest",
    "write_shard",
]
