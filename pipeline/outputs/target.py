"""Where a run writes: its output, its id and folder, the format, and the earlier runs
whose embeddings stay."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.outputs.naming import EMBEDDINGS, UNDECIDED, output_path, run_folder, shard_prefix


@dataclass(frozen=True)
class RunTarget:
    """One run's place in its output, passed whole to every step that writes or reads
    there.

    earlier_runs: with --skip_existing, the runs whose embeddings the output holds (read
    once the run holds the output): the only earlier files any step reads.
    """

    output: str
    run_id: str
    output_format: str = "parquet"
    earlier_runs: tuple[str, ...] = ()

    @property
    def stage(self) -> str:
        """The run's own folder, where it writes everything before the verdict."""
        return run_folder(self.output, self.run_id)

    @property
    def undecided(self) -> str:
        """Where a run that decides what to keep stores its record files first; the
        decided ones go to the stage, and these are never published."""
        return output_path(self.stage, UNDECIDED)

    def record_stage(self, curated: bool) -> str:
        """Where the store writes the record files: undecided when curated."""
        return self.undecided if curated else self.stage

    @property
    def staged_shards(self) -> str:
        """A wildcard of the Parquet shards the run stages."""
        return shard_prefix(self.stage, EMBEDDINGS, self.run_id) + "-*.parquet"
