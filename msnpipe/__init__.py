"""msnpipe: ImageFolder -> shards -> MSN embeddings -> label-efficiency curves.

    msnpipe shard /data/imagenet out/shards        # = python -m shard ...
    msnpipe embed out/shards --split val ...       # = python -m embed ...
    msnpipe probe out/embeddings.zarr ...          # = python -m probe ...
    msnpipe bench gpu                              # = python -m bench gpu

The stages are the top-level packages `shard`, `embed`, `probe` and `bench`; this package
holds only what every stage shares: the command-line entry point (`msnpipe.cli`), the error
type every stage raises on bad input and the logging/device helpers (`msnpipe.runtime`),
the one-writer locks and append-only journals (`msnpipe.files`), worker pools that die
with their parent (`msnpipe.pool`), and the embed stage's JPEG decoders run in processes that
may crash, which shard.verify and embed both use to name a file no decoder reads
(`msnpipe.decoders`).
"""
