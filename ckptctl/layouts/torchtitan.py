"""torchtitan's checkpoint folder, and any directory of plain DCP checkpoints.

torchtitan (``torchtitan/components/checkpointer/dcp.py``) saves each checkpoint with
``torch.distributed.checkpoint`` into ``{dump_folder}/{checkpoint.folder}/step-{N}/`` (folder
``checkpoint`` by default) and resumes with ``--checkpoint.load_step N``, or without it from the
highest ``step-N`` that holds a ``.metadata`` — whether or not its shard files are all there
(torchtitan #315: resuming from an incomplete checkpoint). This layout recognises:

- a directory with ``step-<N>/`` subdirectories holding DCP files (``.metadata``, ``*.distcp``):
  torchtitan's ``checkpoint/`` folder. Other subdirectories that are one DCP checkpoint each
  (:func:`ckptctl.formats.dcp.looks_like_dcp`) are units too, named by their directory
  ("plain DCP"), so a script that calls ``dcp.save(state, checkpoint_id=run/"ckpt_a")`` is
  covered;
- torchtitan's dump folder (``outputs/``) when it holds no such subdirectory itself but its
  ``checkpoint/`` subfolder does: the units are then ``checkpoint/step-N`` (named so).

A unit is one DCP directory. Its step is ``train_state.step`` (an int today; a 0-d int32 tensor
in torchtitan's 2024 saves, whose 4 bytes are read from its ``torch.save`` blob without torch),
else the ``N`` of ``step-N``; ``lr_scheduler.last_epoch`` and ``train_state.ntokens_seen`` go to
``metrics``. Only those few values are decoded (through the restricted unpickler), never the
``io.BytesIO`` blobs of the 2024 train state nor any tensor. A unit is complete when ``.metadata``
is present (DCP writes it last: without it the save never finished) and every shard file it
references is present, a regular file, and as long as ``.metadata`` says; a missing shard file is
listed in ``missing``, a short one is a note (``truncated: ...``). See docs/layouts/torchtitan.md.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import stat as stat_module
import struct
import zipfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, UnreadableCheckpoint, UnsafeCheckpoint
from ..formats import dcp
from ..formats.safe_open import open_regular
from ..formats.scalars import STRUCT_CODES, is_scalar
from ..formats.unpickler import DCP_RECORDS, TensorRef, safe_loads
from .base import Layout, Unit, UnitFile, content_of, stat_file
from .metadata import as_float, as_int

STEP_DIR = re.compile(r"step-(?P<step>\d{1,18})")  # torchtitan's _create_checkpoint_id: f"step-{step}"
CHECKPOINT_FOLDER = "checkpoint"  # torchtitan's default --checkpoint.folder, under the dump folder
LOAD_STEP_FLAG = "--checkpoint.load_step"
FOLDER_FLAG = "--checkpoint.folder"
HF_INDEX = "model.safetensors.index.json"  # torchtitan's last_save_in_hf export (model only)
MAX_VALUE_BYTES = 64 * 1024  # one value blob read for the listing (a step, a counter): a few KB in practice
MAX_TRAIN_STATE_VALUES = 16  # train_state.* entries looked at (torchtitan's: 2 today, 4 in 2024)
BYTESIO_GLOBALS = {"_io.BytesIO", "_codecs.encode"}  # torchtitan's 2024 train_state blobs
MAX_JSON_BYTES = 64 * 1024 * 1024  # an index.json larger than this is refused (a note), not parsed
MAX_FILES = 10_000  # files of one unit stat'ed for du (DCP writes a few per rank)

# (metrics key, DCP key): numbers recorded for every unit when present
METRIC_KEYS = (("last_epoch", "lr_scheduler.last_epoch"), ("ntokens_seen", "train_state.ntokens_seen"))
STEP_KEYS = ("train_state.step", "step", "global_step")  # first found wins; top-level ones for plain DCP saves
EPOCH_KEYS = ("train_state.epoch", "epoch")


class TorchtitanLayout(Layout):
    name = "torchtitan"
    title = "torchtitan / DCP"
    resume_flag = LOAD_STEP_FLAG

    def recognise(self, directory: Path, names: list[str]) -> bool:
        return bool(_candidates(directory, names)) or _dump_folder(directory, names) is not None

    def units(self, directory: Path) -> list[Unit]:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return []
        candidates = _candidates(directory, names)
        prefix = ""
        if not candidates:
            folder = _dump_folder(directory, names)
            if folder is None:
                return []
            prefix = CHECKPOINT_FOLDER + "/"
            try:
                candidates = _candidates(folder, sorted(os.listdir(folder)))
            except OSError:
                return []
        units = [_unit(self.name, path, prefix + path.name) for path in candidates]
        units.sort(key=lambda u: (u.step is not None, u.step or 0, u.name))
        return units

    def resume_args(self, unit: Unit, directory: Path) -> list[str]:
        """``--checkpoint.load_step N``: torchtitan opens ``{folder}/step-{N}``, so N is the
        directory's number (equal to ``train_state.step`` unless someone renamed it). A folder not
        called ``checkpoint`` is passed as ``--checkpoint.folder`` (relative to the dump folder,
        which is then the folder's parent). A plain DCP unit has no torchtitan step: its path."""
        match = STEP_DIR.fullmatch(unit.path.name)
        if match is None:
            return [str(unit.path)]
        args = [LOAD_STEP_FLAG, str(int(match["step"]))]
        folder = unit.path.parent.name
        return args if folder == CHECKPOINT_FOLDER else [FOLDER_FLAG, folder, *args]


# ------------------------------------------------------------------------------ recognition


def _candidates(directory: Path, names: list[str]) -> list[Path]:
    """The checkpoint directories of ``directory``: ``step-N`` ones (empty ones included once a
    sibling holds DCP files: an interrupted save) and any other that is one DCP checkpoint.
    A dangling or looping ``step-N`` symlink is a candidate too (it becomes an incomplete unit).
    Empty when nothing holds DCP files (then this is not a DCP run at all)."""
    found: list[Path] = []
    evidence = False
    for name in names:
        if name.startswith("."):
            continue
        path = directory / name
        step_dir = STEP_DIR.fullmatch(name) is not None
        if not step_dir:
            if dcp.looks_like_dcp(path):  # also follows a symlink to a DCP directory
                found.append(path)
                evidence = True
            continue
        if path.is_dir():
            found.append(path)
            evidence = evidence or _has_dcp_files(path)
        elif path.is_symlink() and not path.exists():
            found.append(path)
    return found if evidence else []


def _has_dcp_files(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return any(d.name == dcp.METADATA_FILE or d.name.endswith(dcp.SHARD_SUFFIX) or d.name == HF_INDEX for d in it)
    except OSError:
        return False


def _dump_folder(directory: Path, names: list[str]) -> Path | None:
    """``directory/checkpoint`` when ``directory`` is torchtitan's dump folder (it holds the steps)."""
    if CHECKPOINT_FOLDER not in names:
        return None
    folder = directory / CHECKPOINT_FOLDER
    try:
        if not folder.is_dir() or _candidates(directory, names):
            return None
        inner = sorted(os.listdir(folder))
    except OSError:
        return None
    return folder if any(STEP_DIR.fullmatch(n) for n in inner) and _candidates(folder, inner) else None


# ------------------------------------------------------------------------------------ a unit


def _unit(layout: str, path: Path, name: str) -> Unit:
    match = STEP_DIR.fullmatch(path.name)
    name_step = int(match["step"]) if match else None
    unit = Unit(layout, name, path, is_directory=True, step=name_step)
    if not path.is_dir():
        unit.complete = False
        unit.missing = [dcp.METADATA_FILE]
        unit.notes.append(_link_note(path))
        return unit
    unit.files = _files(path)
    names = {f.path.name for f in unit.files}
    if dcp.METADATA_FILE not in names:
        if HF_INDEX in names:
            _hf_export(unit, path)
            return unit
        unit.complete = False
        unit.missing = [dcp.METADATA_FILE]
        unit.notes.append("no .metadata: a save that did not finish (DCP writes it last)")
        return unit
    try:
        metadata = dcp._load_metadata(path)
        check_shards(unit, path, metadata)
        if unit.complete:
            _read_values(unit, path, metadata, name_step)
    except UnsafeCheckpoint as exc:
        unit.complete = False
        unit.notes.append(f"unsafe: {exc.reason} (not executed)")
    except CheckpointError as exc:
        unit.complete = False
        unit.notes.append(f"{exc.status}: {exc.reason}")
    except OSError as exc:
        unit.complete = False
        unit.notes.append(f"unreadable: {exc.strerror or exc}")
    return unit


def _link_note(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return "not a directory"
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"looping symlink to {target}"
    return f"dangling symlink to {target}"


def _files(path: Path) -> list[UnitFile]:
    """The regular files directly inside (DCP writes no subdirectories), stat'ed for du."""
    files: list[UnitFile] = []
    try:
        with os.scandir(path) as it:
            for dirent in it:
                if len(files) >= MAX_FILES:
                    break
                try:
                    if not dirent.is_file():
                        continue
                except OSError:
                    continue
                content = content_of(dirent.name)
                files.append(stat_file(Path(dirent.path), content))
    except OSError:
        pass
    files.sort(key=lambda f: f.path.name)
    return files


def check_shards(unit: Unit, path: Path, metadata: Any) -> None:
    """Every shard file ``.metadata`` references: present (else ``missing``), regular, long enough."""
    needed: dict[str, int] = {}
    for _fqn, _offset, rel, start, length in dcp._storage_items(metadata):
        needed[rel] = max(needed.get(rel, 0), start + length)
    for rel in sorted(needed):
        try:
            info = os.stat(path / rel)
        except FileNotFoundError:
            unit.missing.append(rel)
            continue
        except OSError as exc:
            unit.notes.append(f"unreadable: shard file {rel}: {exc.strerror or exc}")
            unit.complete = False
            continue
        if not stat_module.S_ISREG(info.st_mode):
            unit.notes.append(f"unreadable: shard file {rel} is not a regular file")
            unit.complete = False
        elif info.st_size < needed[rel]:
            unit.notes.append(f"truncated: shard file {rel} holds {info.st_size} bytes, .metadata expects {needed[rel]}")
            unit.complete = False
    if unit.missing:
        unit.complete = False
        unit.notes.append(f"missing shard file(s) named in .metadata: {', '.join(unit.missing)}")


def _read_values(unit: Unit, path: Path, metadata: Any, name_step: int | None) -> None:
    """step, epoch and the metrics from the few values that hold them (nothing else is decoded)."""
    entries = metadata.fields["state_dict_metadata"]
    locations = {fqn: (rel, start, length) for fqn, _o, rel, start, length in dcp._storage_items(metadata)}
    wanted = [k for k in (*STEP_KEYS, *EPOCH_KEYS, *(key for _m, key in METRIC_KEYS)) if k in locations]
    others = [k for k in locations if k.startswith("train_state.") and k not in wanted]
    values: dict[str, Any] = {}
    skipped: list[str] = []
    for fqn in wanted + others[:MAX_TRAIN_STATE_VALUES]:
        rel, start, length = locations[fqn]
        try:
            values[fqn] = _value(path / rel, start, length, entries.get(fqn), fqn)
        except UnsafeCheckpoint as exc:
            if fqn in others and set(exc.globals) <= BYTESIO_GLOBALS and exc.globals:
                skipped.append(fqn)  # torchtitan's 2024 loss history: an io.BytesIO, harmless but not read
                continue
            raise UnsafeCheckpoint(exc.globals, reason=f"{fqn}: {exc.reason}") from None
    if skipped:
        unit.notes.append(f"{', '.join(skipped)}: io.BytesIO blob(s) (torchtitan's 2024 train state), not read")
    step = next((as_int(values[k]) for k in STEP_KEYS if as_int(values.get(k)) is not None), None)
    if step is not None:
        if name_step is not None and step != name_step:
            unit.notes.append(f"train_state.step is {step} but the directory is step-{name_step}")
        unit.step = step
    epoch = next((as_float(values[k]) for k in EPOCH_KEYS if as_float(values.get(k)) is not None), None)
    unit.epoch = epoch
    for metric, key in METRIC_KEYS:
        number = as_float(values.get(key))
        if number is not None:
            unit.metrics[metric] = int(number) if isinstance(values.get(key), int) else number
    if all(isinstance(item, DCP_RECORDS["TensorStorageMetadata"]) for item in entries.values()) and not any(
        fqn.startswith("optimizer.") for fqn in entries
    ):  # tensors only, none of them an optimizer's: torchtitan's last_save_model_only (its default)
        unit.notes.append("model only (no optimizer or train state): torchtitan's last_save_model_only")


def _value(shard: Path, start: int, length: int, entry: Any, fqn: str) -> Any:
    """One small value of a DCP checkpoint: a ``torch.save`` blob at ``start`` of ``shard``.

    A non-tensor value goes through the restricted unpickler (:func:`ckptctl.formats.dcp._decode_blob`);
    a one-element tensor (the 2024 ``train_state.step``) gives its number, read from the blob's
    ``data/<key>`` record with ``struct`` in the blob's byte order. Anything else is None.
    """
    if length > MAX_VALUE_BYTES:
        return None
    with open_regular(shard) as fh:  # never blocks on a FIFO swapped in since check_shards
        fh.seek(start)
        blob = fh.read(length)
    if len(blob) != length:
        raise UnreadableCheckpoint(f"value {fqn}: truncated")
    if isinstance(entry, DCP_RECORDS["TensorStorageMetadata"]):
        return _tensor_scalar(fqn, blob)
    value, _used = dcp._decode_blob(fqn, blob, MAX_VALUE_BYTES)
    return value


def _tensor_scalar(fqn: str, blob: bytes) -> float | int | None:
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            infos = {i.filename.split("/", 1)[-1]: i for i in archive.infolist()}
            pickle_info = infos.get("data.pkl")
            if pickle_info is None or any(i.compress_type != zipfile.ZIP_STORED for i in infos.values()):
                return None
            tensor, _storages = safe_loads(archive.read(pickle_info))
            if not is_scalar(tensor):
                return None
            assert isinstance(tensor, TensorRef)
            record = infos.get(f"data/{tensor.storage.key}")
            order = archive.read(infos["byteorder"]).decode("ascii", "replace").strip() if "byteorder" in infos else "little"
            if record is None or order not in ("little", "big") or record.file_size > MAX_VALUE_BYTES:
                return None
            data = archive.read(record)  # CRC-checked by zipfile
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, ValueError, KeyError):
        raise UnreadableCheckpoint(f"value {fqn}: damaged") from None
    itemsize = struct.calcsize(STRUCT_CODES.get(tensor.dtype, "f"))
    raw = data[tensor.offset * itemsize : tensor.offset * itemsize + itemsize]
    if tensor.dtype not in STRUCT_CODES or len(raw) != itemsize:
        return None
    return struct.unpack(("<" if order == "little" else ">") + STRUCT_CODES[tensor.dtype], raw)[0]


# --------------------------------------------------------- torchtitan's Hugging Face export


def _hf_export(unit: Unit, path: Path) -> None:
    """A ``step-N`` written with ``last_save_in_hf``: safetensors + index, model weights only.

    torchtitan counts it when it looks for the latest step; it cannot resume training from it
    (no optimizer), which the note says. Complete when every file the index names is present.
    """
    unit.notes.append("Hugging Face safetensors export (last_save_in_hf): model weights only")
    try:
        index = _read_json(path / HF_INDEX)
    except (CheckpointError, OSError) as exc:
        unit.complete = False
        unit.notes.append(f"{HF_INDEX}: {exc.reason if isinstance(exc, CheckpointError) else exc.strerror or exc}")
        return
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        unit.complete = False
        unit.notes.append(f"{HF_INDEX}: no weight_map")
        return
    shards = sorted({v for v in weight_map.values() if isinstance(v, str)})
    unit.missing = [s for s in shards if "/" in s or s in ("", ".", "..") or not (path / s).is_file()]
    unit.complete = not unit.missing


def _read_json(path: Path) -> Any:
    """A small JSON file: at most :data:`MAX_JSON_BYTES`, never a FIFO, never a crash on bad text."""
    with open_regular(path) as fh:
        data = fh.read(min(os.fstat(fh.fileno()).st_size, MAX_JSON_BYTES) + 1)
    if len(data) > MAX_JSON_BYTES:
        raise UnreadableCheckpoint(f"larger than {MAX_JSON_BYTES:,} bytes, not read")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise UnreadableCheckpoint("not JSON") from None
