"""The DAS log on disk: the FM's prediction for each unique example, computed once, keyed by event id.

ExFM's Data Augmentation Service runs the FM once per example and lets every VM distil from the logged
prediction. Here that log is a file: `adrank train fm` writes one for the events it saw (`das.npz` beside
`fm.pt`), `adrank das` writes one for any event log, and `adrank train vm --kd …` and `adrank experiment`
read it back instead of running the FM again. The file is a plain `.npz` (no pickled objects; read with
allow_pickle=False) written atomically: event_id int64 [N] sorted unique, fm_logit float32 [N], and a JSON
header naming the fm_version and the source.

Usage::

    write_das("runs/x/das.npz", fm_version, events["event_id"], logits, source=events.source)
    logits = read_das("runs/x/das.npz", events, fm_version)   # float32 [len(events)], NaN where not logged
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.data.schema import EventLog

DAS_FILE = "das.npz"
_FORMAT = 1


class DasLogError(ValueError):
    """The DAS log is missing, of another FM version or source, or lacks examples a VM needs."""


def write_das(path: str | Path, fm_version: str, event_ids: np.ndarray, logits: np.ndarray, *,
              source: str, log: str = "in-sample", producer: np.ndarray | None = None) -> Path:
    """Writes one prediction per unique event id (the first occurrence wins) atomically (temp file + rename).

    `log` names how the predictions were made (in-sample, or an out-of-sample method of models.das_oos);
    `producer` (int32, one per event) records which FM logged each one, so the log can be audited."""
    event_ids = np.asarray(event_ids, np.int64)
    logits = np.asarray(logits, np.float32)
    if event_ids.shape != logits.shape or event_ids.ndim != 1:
        raise DasLogError(f"event_ids {event_ids.shape} and logits {logits.shape} must be equal-length 1-D arrays")
    if not np.isfinite(logits).all():
        raise DasLogError("DAS logits hold NaN or inf: the FM diverged; refusing to log them")
    ids, first = np.unique(event_ids, return_index=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"format": _FORMAT, "fm_version": fm_version, "source": source, "n": int(len(ids)),
                         "log": log})
    extra = {} if producer is None else {"producer": np.asarray(producer, np.int32)[first]}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, header=np.frombuffer(header.encode(), np.uint8), event_id=ids, fm_logit=logits[first], **extra)
    tmp.replace(path)
    return path


def das_header(path: str | Path) -> dict:
    if not Path(path).is_file():
        raise DasLogError(f"{path}: no DAS log there; `adrank train fm` writes one beside fm.pt and "
                          "`adrank das --fm-checkpoint F` writes one for any event log")
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            return json.loads(bytes(data["header"]).decode())
    except (OSError, KeyError, ValueError) as exc:
        raise DasLogError(f"{path}: not a readable DAS log ({exc})") from exc


def read_das(path: str | Path, events: EventLog, fm_version: str) -> np.ndarray:
    """The logged FM logit of every row of `events` (float32, NaN where the log has no entry).

    Refuses a log of another fm_version or source: distilling from the wrong FM is a silent skew.
    """
    header = das_header(path)
    if header.get("fm_version") != fm_version:
        raise DasLogError(f"{path} logs {header.get('fm_version')!r}; the VM is trained with {fm_version!r}")
    if header.get("source") != events.source:
        raise DasLogError(f"{path} logs {header.get('source')!r} events; the VM trains on {events.source!r}")
    with np.load(Path(path), allow_pickle=False) as data:
        ids, logits = data["event_id"], data["fm_logit"]
    out = np.full(len(events), np.nan, np.float32)
    pos = np.searchsorted(ids, events["event_id"])
    pos_c = np.minimum(pos, max(len(ids) - 1, 0))
    found = (pos < len(ids)) & (ids[pos_c] == events["event_id"]) if len(ids) else np.zeros(len(events), bool)
    out[found] = logits[pos_c[found]]
    return out


def require_logged(logits: np.ndarray, rows: np.ndarray, path: str | Path) -> None:
    """Raises when any of `rows` has no logged prediction (KD would silently train on NaN)."""
    missing = int(np.isnan(logits[rows]).sum())
    if missing:
        raise DasLogError(f"{path} has no FM prediction for {missing:,} of {len(rows):,} training examples; "
                          "write one for this event log with `adrank das`")
