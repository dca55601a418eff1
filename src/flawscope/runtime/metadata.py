"""``metadata.json`` of an exported model: what the graph takes and gives, and everything around it that the
runtime does (resizing in, resizing the maps out, thresholds, opening, boxes) -- written by
:mod:`flawscope.export`, read and checked here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flawscope.errors import ModelFileError

METADATA_FILE = "metadata.json"
EXPORT_FORMAT = "flawscope-export"
EXPORT_FORMAT_VERSION = 1
# what every metadata.json must hold, section by section
REQUIRED = {
    "model": ("method", "params", "content_hash", "flawscope_version"),
    "graph": ("formats", "default_format", "opset", "exporter", "inputs", "outputs"),
    "input": ("channels", "value_range", "resize", "size", "aspect_short_side"),
    "postprocess": ("map_resize", "threshold", "pixel_threshold", "calibration", "opening", "opening_shape"),
}


def read_json_file(path: Path, missing: str) -> Any:
    """The JSON in ``path``; :class:`ModelFileError` with ``missing`` when there is no such file, or naming the
    file when it cannot be read as JSON."""
    if not path.is_file():
        raise ModelFileError(missing)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path} cannot be read as JSON: {error}") from error


def is_exported(directory: str | Path) -> bool:
    """True for a directory written by ``flawscope export`` (it has a ``metadata.json``)."""
    return (Path(directory) / METADATA_FILE).is_file()


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The checked ``metadata.json`` of an exported directory; :class:`ModelFileError` naming the file and
    what is wrong otherwise."""
    path = Path(directory) / METADATA_FILE
    metadata = read_json_file(path, f"{directory} is not an exported flawscope model: it has no {METADATA_FILE}.")
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        raise ModelFileError(f"{path} is not the metadata of an exported flawscope model (format {EXPORT_FORMAT!r}).")
    if metadata.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has export format version {metadata.get('format_version')!r}; this flawscope reads version "
            f"{EXPORT_FORMAT_VERSION}. Export the model again with this flawscope."
        )
    for section, keys in REQUIRED.items():
        missing = [key for key in keys if key not in metadata.get(section, {})]
        if missing:
            raise ModelFileError(f"{path} lacks {section}.{', '.join(missing)}; export the model again.")
    return metadata


def write_metadata(directory: Path, metadata: dict[str, Any]) -> Path:
    path = directory / METADATA_FILE
    path.write_text(
        json.dumps({"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, **metadata}, indent=2)
    )
    return path


__all__ = ["EXPORT_FORMAT", "METADATA_FILE", "is_exported", "read_metadata", "write_metadata"]
