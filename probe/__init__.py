"""probe: embeddings to answers: few-shot curves, the MSN protocol, kNN, plots and tables.

    python -m probe out/embeddings.zarr --encoder vits16_800ep --out out/probe
    python -m probe.plot out/probe --out out/probe/fewshot.png
    python -m probe.msn out/embeddings.zarr --encoder vits16_800ep --subset subsets/5imgs_class.txt
    python -m probe.knn out/embeddings.zarr --encoder vits16_800ep
    python -m probe.table out/probe

Stores are read only through `embed.store.open_embeddings`.
"""
