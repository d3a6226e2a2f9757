"""The kinds of file an output publishes, each declared by the output that writes it, so
that a run's publish replaces the earlier runs' files of every kind without a list of
its own."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.outputs.naming import output_path, run_of_shard


@dataclass(frozen=True)
class FileKind:
    """Shards NAME-RUN-SSSSS-of-NNNNN.SUFFIX (or, unsharded, the one file NAME) under the
    output, or in the Vector Search folder (in_vectors). kept_by_increments: the earlier
    runs' files that --skip_existing keeps (the embeddings' record files); every other
    kind is replaced by each run."""

    name: str
    suffix: str = ""
    sharded: bool = True
    in_vectors: bool = False
    kept_by_increments: bool = False

    def glob(self, folder: str) -> str:
        base = output_path(folder, self.name)
        return f"{base}-*-of-*{self.suffix}" if self.sharded else base

    def run_of(self, folder: str, path: str) -> str | None:
        """The run whose shard path is, for a shard of this kind in folder; else None."""
        run = run_of_shard(path)
        base = f"{output_path(folder, self.name)}-{run}-"
        return run if run and path.startswith(base) and path.endswith(self.suffix) else None
