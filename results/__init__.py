"""Request records, metrics as ``vllm bench serve`` defines them, reports."""
from results.records import SCHEMA, SCHEMA_VERSION, RequestRecord, read_records, write_records
from results.rundir import NotARunDirectory, RunDir, Unit, load_run

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "NotARunDirectory", "RequestRecord", "RunDir", "Unit",
    "load_run", "read_records", "write_records",
]
