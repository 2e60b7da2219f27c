"""Byte-level data pipeline: corpora -> MDS shards -> the resumable training stream.

Modules, one job each:

* ``sources``   input discovery and streaming readers (parquet, jsonl(.gz/.zst), text) + filters
* ``packing``   ``BOS utf8 EOS`` encoding, the hashed train/val split, fixed-size samples
* ``writer``    one work unit -> MDS sub-directories; merging their indexes
* ``sharding``  the tool's run: preflight, lock, worker pool, progress, restart, publish
* ``manifest``  settings, input identities, ``manifest.json``
* ``verify``    re-hash shards against ``index.json``
* ``readback``  read stored samples in storage order (audits, tests)
* ``dataset``   ``ByteSampleDataset`` and the train / val ``StreamingDataLoader`` builders
* ``shm``       safe removal of stale mosaicml-streaming shared memory
"""
