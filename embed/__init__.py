"""embed: WebDataset shards to MSN ViT embeddings in a resumable Zarr store.

    python -m embed out/shards --split val --encoder vits16_800ep --weights weights/ \
        --out out/embeddings.zarr
    torchrun --nproc-per-node 8 -m embed out/shards --split train --encoder vitl7_200ep \
        --weights weights/ --out out/embeddings.zarr
    python -m embed.info out/embeddings.zarr

The store layout is in docs/formats.md; the reader the next stage uses is `embed.store`.
"""
