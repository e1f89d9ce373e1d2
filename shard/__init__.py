"""shard: an ImageFolder becomes validated WebDataset tar shards with DALI indexes.

    python -m shard /data/imagenet out/shards                  # train/ and val/
    python -m shard /data/flowers out/shards --split train     # SRC is one class-folder tree
    python -m shard.verify out/shards                          # re-read and check every byte

The format (tars, .idx, samples.tsv, manifest.json) is described in docs/formats.md; the
reader the next stage uses is `shard.reader`.
"""

FORMAT = "msnpipe-shards/1"
