"""Reading the three files under the data contract, and every violation found on the way.

The face of the package: the rest of the job uses only what this module names.  Inside, ``files``
reads a run's three files in order; ``extract`` reads one file: ``header`` checks its header,
``fast`` reads typed batches where good data stays, and at the first problem ``diagnose`` re-reads
it with exact line numbers (``lines``: one row per physical line; ``keys``: duplicate keys; ``rules``:
the value rules both paths share; ``violations``: the reports)."""

from etl_core.reading.extract import Collector, FileResult, References, output_schema, read_file, read_header
from etl_core.reading.files import Extracted, check_headers, read_all
from etl_core.reading.header import header_end
from etl_core.reading.violations import REPORTED_CHARS, report, without_raw
from etl_core.reading.violations import rows as violation_rows

__all__ = ["REPORTED_CHARS", "Collector", "Extracted", "FileResult", "References", "check_headers", "header_end",
           "output_schema", "read_all", "read_file", "read_header", "report", "violation_rows", "without_raw"]
