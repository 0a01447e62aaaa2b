"""``resume-cmd`` as data: the command line that resumes a run with every saved hyperparameter.

Resuming with a different batch size or learning rate silently breaks the optimizer and data
state, so the command is rebuilt from the checkpoint's own ``args`` and every ``--set`` override
is compared with the saved value, with a note when the key interacts with saved state.

Rendering follows what an ``argparse`` parser built from the same keys reads back:

* scalars as ``--key=value`` (the ``=`` form keeps values like ``-x`` or ``""`` intact);
* ``True`` as ``--key`` and ``False`` left out (``store_true``), or ``--no-key`` with
  ``bool_style="optional"`` (``argparse.BooleanOptionalAction``);
* lists and tuples as ``--key v1 v2`` (``nargs="*"``), an empty list as a bare ``--key``;
* ``None`` left out, so the script's default (normally ``None``) applies;
* every token quoted with :func:`shlex.quote`, so the line can be pasted, ``eval``'d or run by
  ``sh -c``. A scalar ``--`` (which argparse cannot read back) is printed with a warning.

The checkpoint is untrusted, and the documented ``eval "$(ckptctl resume-cmd ...)"`` runs what is
printed, so only what a shell and argparse take as *data* is emitted (:func:`check_word`):

* the script is a path: not empty, not starting with ``-`` (``-c<code>`` would make python run
  code), no control or invisible characters (nothing in the line can repaint a terminal);
* every saved key matches :data:`OPTION_KEY`; every value is printable text; a list item never
  starts with ``-`` unless it is a negative number (argparse would take it for an option).

Another framework's layout (``resume-cmd DIR`` on an HF Trainer, Lightning, accelerate, DeepSpeed
or torchtitan directory, or one of its checkpoints named directly): the checkpoint is the newest
*complete, valid* unit (:func:`ckptctl.ops.foreign.choose_resume`, with why newer ones were passed
over), and what is printed is the framework's own resume arguments
(:meth:`~ckptctl.layouts.base.Layout.resume_args`: ``--resume_from_checkpoint DIR``,
``--ckpt_path FILE``, ``--checkpoint.load_step N``, ``--load_checkpoint DIR --ckpt_id TAG``),
after ``PYTHON SCRIPT`` when ``--script`` is given, and after the ``--set`` overrides (compared with
the unit's recorded hyperparameters, ``unit.hparams``, when it has them).

What the user typed (``--script``, ``--python``, ``--set``) is refused as bad input (exit 2). From
the checkpoint, a key or value that breaks a rule is left out with a warning, and a recorded script
or a checkpoint path that does is refused as :class:`UnsafeCheckpoint` (exit 1, nothing printed).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from decimal import Decimal
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from ..errors import BadInputError, NoCheckpointError, UnreadableCheckpoint, UnsafeCheckpoint
from ..layouts.metadata import args_dict, as_float, as_int, summarize
from ..formats.reader import read_checkpoint
from .resolve import Resolution, resolve_target
from ..formats.unpickler import NumpyArray
from ..formats.values import bounded_repr, jsonable

DEFAULT_PYTHON = "python"
PLACEHOLDER_SCRIPT = "train.py"
SCRIPT_KEYS = ("script", "script_path", "train_script")
BOOL_STYLES = ("flag", "optional")
TRUE_WORDS = {"true", "1", "yes", "on", "y", "t"}
FALSE_WORDS = {"false", "0", "no", "off", "n", "f"}
# argparse (3.11) reads these as numbers, not options, inside an nargs list.
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
# A key we write as --key=value: argparse's own spelling of a long option, nothing a shell or
# argparse could read as more than one word, an option prefix or a value.
OPTION_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Risk:
    """A family of keys whose change interacts with state restored from the checkpoint."""

    category: str
    pattern: re.Pattern[str]
    reason: str


def _risk(category: str, regex: str, reason: str) -> Risk:
    return Risk(category, re.compile(regex, re.IGNORECASE), reason)


# First match wins: the schedule rule must come before the plain learning-rate rule.
RISKS: tuple[Risk, ...] = (
    _risk("schedule", r".*(warmup|scheduler|schedule|lr_decay|decay_steps|max_steps|total_steps).*",
          "the saved scheduler state was built for the old value: the schedule jumps or stretches"),
    _risk("learning rate", r"(.*_)?(lr|learning_rate)(_.*)?",
          "optimizer.load_state_dict restores the saved lr{saved_lr}: the new value is ignored "
          "unless the script resets param_groups after loading"),
    _risk("batch size", r"(.*_)?(batch_?size|batch|bs|micro_batch_size|micro_batch|grad_accum\w*|"
          r"gradient_accumulation\w*|accumulation_steps|accum_steps)",
          "the effective batch changes: the saved dataloader position and the lr schedule no longer line up"),
    _risk("optimizer betas", r"(.*_)?(betas?\d?|momentum)",
          "the saved optimizer state restores its own betas/momentum, and its moments were built with the old ones"),
    _risk("weight decay", r"(.*_)?(weight_decay|wd)",
          "optimizer.load_state_dict restores the saved weight_decay: the new value is ignored unless reset"),
    _risk("optimizer", r"optimizer|optim|opt|optimizer_(name|type)",
          "the saved optimizer state belongs to the old optimizer and will not load into a new one"),
    _risk("sequence length", r"(.*_)?(seq_len|seq_length|sequence_length|max_seq_len|max_seq_length|"
          r"block_size|context_length|context_len|ctx_len|n_ctx|max_len|max_length)",
          "the saved dataloader position counts samples of the old length: the data order shifts"),
    _risk("data path", r"(.*_)?(data|dataset|corpus)(_?(path|paths|dir|root|file|files|name|set|url))?|"
          r"(train|val|valid|eval|test)_(file|files|path|paths|dir)",
          "the saved dataloader position refers to the old data: samples are skipped or repeated"),
    _risk("world size", r"(.*_)?(world_size|num_gpus|n_gpus|ngpus|gpus|nproc\w*|num_nodes|nnodes|"
          r"num_processes|devices)",
          "the dataloader position and the effective batch depend on the number of processes"),
    _risk("seed", r"(.*_)?seed",
          "RNG states are restored from the checkpoint: a new seed has no effect after resuming"),
)  # fmt: skip


@dataclass
class Change:
    """One ``--set`` override next to the saved value, with a note when it touches saved state."""

    key: str
    checkpoint_value: Any
    new_value: Any
    is_new_key: bool = False
    risk: str | None = None
    note: str | None = None

    @property
    def changed(self) -> bool:
        return self.is_new_key or not _same(self.checkpoint_value, self.new_value)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "checkpoint_value": jsonable(self.checkpoint_value),
            "new_value": jsonable(self.new_value),
            "changed": self.changed,
            "new_key": self.is_new_key,
            "risk": self.risk,
            "note": self.note,
        }


@dataclass
class ResumeCommand:
    """The rebuilt command line and everything the user should know before running it."""

    resolution: Resolution
    python: list[str]
    script: str
    script_is_placeholder: bool
    resume_flag: str
    args: dict[str, Any]
    step: int | None
    epoch: int | None
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    layout: str = "ckptctl"  # the layout's id (``hf-trainer``); ckptctl's own otherwise
    resume_args: list[str] = field(default_factory=list)  # the words that name the checkpoint to resume from

    @property
    def checkpoint(self) -> Path:
        return self.resolution.path

    @property
    def command(self) -> str:
        """The argv as one POSIX shell line."""
        return shlex.join(self.argv)

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "requested": self.resolution.requested,
            "skipped": [{"path": str(e.path), "reason": r} for e, r in self.resolution.skipped],
            "step": self.step,
            "epoch": self.epoch,
            "python": self.python,
            "script": self.script,
            "script_is_placeholder": self.script_is_placeholder,
            "resume_flag": self.resume_flag,
            "args": jsonable(self.args),
            "argv": self.argv,
            "command": self.command,
            "changes": [c.to_json() for c in self.changes],
            "warnings": self.warnings,
            "layout": self.layout,
            "resume_args": self.resume_args,
        }


def build_resume_command(
    target: str,
    *,
    directory: str | None = None,
    overrides: list[str] | None = None,
    allow_new: bool = False,
    script: str | None = None,
    python: str = DEFAULT_PYTHON,
    resume_flag: str = "--resume",
    bool_style: str = "flag",
) -> ResumeCommand:
    """Resolve ``target``, read its saved args safely, apply ``--set`` overrides, render argv."""
    if bool_style not in BOOL_STYLES:
        raise BadInputError(f"unknown boolean style {bool_style!r} (choose from {', '.join(BOOL_STYLES)})")
    resume_flag = _check_flag(resume_flag)
    python_argv = _split_python(python)
    if script is not None and (why := script_problem(script)):
        raise BadInputError(f"--script {script!r} {why}")
    foreign = _foreign_target(target, directory)
    if foreign is not None:
        return _foreign_command(*foreign, overrides=overrides or [], allow_new=allow_new, script=script,
                                python_argv=python_argv, bool_style=bool_style)  # fmt: skip
    resolution = resolve_target(target, directory)
    if why := check_word(str(resolution.path)):
        raise UnsafeCheckpoint([], f"unsafe: the checkpoint path {str(resolution.path)!r} {why}; nothing printed")
    meta = summarize(read_checkpoint(resolution.path))
    warnings = resolution.fallback_notes()
    saved, dropped = normalise_args(meta.args)
    warnings += dropped
    if meta.args is None:
        warnings.append("the checkpoint has no saved args: the command carries only the resume flag")
    saved_lrs = [g["lr"] for g in (meta.optimizer.param_groups if meta.optimizer else []) if "lr" in g]
    final, changes = apply_overrides(saved, overrides or [], allow_new, saved_lrs)
    overridden = {c.key for c in changes}
    chosen_script, placeholder = _script(script, final, args_dict(meta.args) or {}, overridden, resolution.path)
    if placeholder:
        warnings.append(f"no training script recorded in the checkpoint's args: using the placeholder "
                        f"{PLACEHOLDER_SCRIPT}; set the real one with --script")  # fmt: skip
    resume_key = resume_flag.lstrip("-").replace("-", "_")
    options = {k: v for k, v in final.items() if k != resume_key}
    tokens, problems = args_to_argv(options, bool_style)
    argv = [*python_argv, chosen_script, *tokens, f"{resume_flag}={resolution.path}"]
    return ResumeCommand(resolution, python_argv, chosen_script, placeholder, resume_flag, final,
                         meta.step, meta.epoch, changes, warnings + problems, argv,
                         resume_args=[f"{resume_flag}={resolution.path}"])  # fmt: skip


def _foreign_target(target: str, directory: str | None) -> tuple[Any, Any, Resolution] | None:
    """(run, unit, resolution) when ``target`` is another framework's directory, one of its
    checkpoints, or latest / best in one; None for ckptctl's own layout (today's path)."""
    from .foreign import choose_resume, detect, no_valid_message, open_run, read_run
    from .resolve import BEST, LATEST, NEWEST

    path = Path(target)
    if target in (LATEST, BEST):
        base = Path(directory if directory is not None else ".")
        run = open_run(base) if base.is_dir() else None
        if run is None:
            return None
        if target == BEST:
            best = [u for u in run.units if u.best]
            if not best:
                raise NoCheckpointError(f"no best checkpoint recorded in {run.directory} ({run.layout.title})")
            return _explicit(run, best[-1], BEST)
        choice = choose_resume(run)
        if choice.unit is None:
            raise NoCheckpointError(no_valid_message(run, choice))
        return run, choice.unit, Resolution(choice.unit, LATEST, choice.skipped, choice.reason)  # type: ignore[arg-type]
    if not path.exists():
        return None
    from ..formats.dcp import looks_like_dcp

    if path.is_dir() and not looks_like_dcp(path):
        run = open_run(path)
        if run is not None:
            choice = choose_resume(run)
            if choice.unit is None:
                raise NoCheckpointError(no_valid_message(run, choice))
            return run, choice.unit, Resolution(choice.unit, NEWEST, choice.skipped, choice.reason)  # type: ignore[arg-type]
    parent = path.absolute().parent
    try:
        found = detect(parent)
    except BadInputError:
        return None
    if found is None or not _has_resume_flag(found[1]):
        return None  # loose files keep today's path: the command rebuilt from the file's saved args
    run = read_run(*found)
    unit = next((u for u in run.units if _same_path(os.path.abspath(u.path), os.path.abspath(path))), None)
    return _explicit(run, unit, "file") if unit is not None else None


def _has_resume_flag(layout: Any) -> bool:
    """A framework with its own resume option (loose files have none: a named file keeps today's command)."""
    return layout.resume_flag is not None


def _explicit(run: Any, unit: Any, requested: str) -> tuple[Any, Any, Resolution]:
    """A unit the user named: used only when it is complete and valid (else exit 1, and why)."""
    from .foreign import unit_verdict

    problem = unit_verdict(unit)
    if problem is not None:
        raise UnreadableCheckpoint(f"{unit.name} is {problem}: not resuming from it (resume-cmd {run.directory} "
                                   "chooses the newest complete, valid checkpoint)")  # fmt: skip
    return run, unit, Resolution(unit, requested)  # type: ignore[arg-type]


def _foreign_command(run: Any, unit: Any, resolution: Resolution, *, overrides: list[str], allow_new: bool,
                     script: str | None, python_argv: list[str], bool_style: str) -> ResumeCommand:  # fmt: skip
    """The framework's resume arguments for ``unit``, after ``PYTHON SCRIPT`` (``--script``) and the
    ``--set`` overrides; overrides are compared with ``unit.hparams`` when the layout records them."""
    fragment = [str(word) for word in run.layout.resume_args(unit, run.directory)]
    for word in fragment:
        if why := check_word(word):
            raise UnsafeCheckpoint([], f"unsafe: the resume argument {word!r} {why}; nothing printed")
    saved, _dropped = normalise_args(unit.hparams) if unit.hparams else ({}, [])
    warnings: list[str] = []
    if overrides and not saved and not allow_new:
        raise BadInputError(f"--set: {unit.name} records no hyperparameters to override; pass --allow-new to add options")
    final, changes = apply_overrides(saved, overrides, allow_new)
    tokens, problems = args_to_argv({c.key: final[c.key] for c in changes}, bool_style)
    head = [*python_argv, script] if script is not None else []
    if script is None:
        warnings.append(f"{run.layout.title}: these are the arguments that resume from {unit.name}; add them to "
                        "your training command (or give --script to print a whole command line)")  # fmt: skip
    flag = run.layout.resume_flag or (fragment[0] if fragment and fragment[0].startswith("-") else "")
    return ResumeCommand(resolution, python_argv if script is not None else [], script or "", script is None, flag,
                         final, unit.step, unit.epoch, changes, warnings + problems, [*head, *tokens, *fragment],
                         layout=run.layout.name, resume_args=fragment)  # fmt: skip


def _same_path(a: str, b: str) -> bool:
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def _check_flag(flag: str) -> str:
    if not re.fullmatch(r"--?[A-Za-z0-9][\w\-.]*", flag):
        raise BadInputError(f"not an option name: {flag!r} (e.g. --resume)")
    return flag


def _split_python(python: str) -> list[str]:
    """``--python`` may be a launcher with arguments (``torchrun --nproc_per_node 4``); its first
    word is a program (a path or a name, never an option) and no word holds a control character."""
    try:
        parts = shlex.split(python)
    except ValueError as exc:
        raise BadInputError(f"cannot split --python {python!r}: {exc}") from None
    if not parts:
        raise BadInputError("--python must not be empty")
    if why := script_problem(parts[0]):
        raise BadInputError(f"--python: the program {parts[0]!r} {why}")
    for part in parts[1:]:
        if why := check_word(part):
            raise BadInputError(f"--python: {part!r} {why}")
    return parts


def check_word(word: str) -> str | None:
    """Why ``word`` cannot appear in a printed command line, or None.

    Quoting makes any text data to the shell, but a control or invisible character (ESC, CR,
    newline, U+202E...) would still reach the terminal of whoever reads the line, and could make
    it look like another command. Python's ``str.isprintable`` is the rule (as for display).
    """
    if not word.isprintable():
        return "holds control or invisible characters"
    return None


def script_problem(script: str) -> str | None:
    """Why ``script`` is not a plain path to a script, or None.

    The interpreter reads a first word that starts with ``-`` as its own option: ``-c<code>``
    runs code, ``-m mod`` a module, ``-`` standard input.
    """
    if not script:
        return "is empty"
    if script.startswith("-"):
        return "starts with '-': it would be read as an option, not as a path"
    return check_word(script)


def _script(script: str | None, final: dict[str, Any], raw: dict[str, Any], overridden: set[str],
            checkpoint: Path) -> tuple[str, bool]:  # fmt: skip
    """``--script``, else the first script key of the args (as overridden, else as saved, even if
    normalising left it out), else the placeholder. A recorded script that is not a plain path is
    refused, not replaced: the user has to say which script to run."""
    if script is not None:
        return script, False  # checked before anything was read
    for key in SCRIPT_KEYS:
        value = final[key] if key in final else raw.get(key)
        if not isinstance(value, str) or not value:
            continue
        if why := script_problem(value):
            if key in overridden:
                raise BadInputError(f"--set {key}={value!r}: {why}")
            raise UnsafeCheckpoint([], f"unsafe: {checkpoint}: the saved {key} {value!r} {why}; "
                                       "nothing printed (give the script with --script)")  # fmt: skip
        return value, False
    return PLACEHOLDER_SCRIPT, True


def normalise_args(raw: Any) -> tuple[dict[str, Any], list[str]]:
    """Saved args (dict or Namespace) as command-line-able values; what cannot be is dropped, with why."""
    args = args_dict(raw) or {}
    result: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in args.items():
        if not isinstance(key, str) or not OPTION_KEY.fullmatch(key):
            dropped.append(f"saved arg {key!r} is not an option name: left out")
            continue
        plain = _plain(value)
        if plain is _UNSUPPORTED:
            dropped.append(f"saved arg {key!r} ({type(value).__name__}) cannot be given on a command line: left out")
            continue
        if why := value_problem(plain):
            dropped.append(f"saved arg {key!r}: {why}: left out")
            continue
        result[key] = plain
    return result, dropped


def value_problem(value: Any) -> str | None:
    """Why a plain value cannot be written as data on a command line, or None.

    Scalars are written as ``--key=value``, so any printable text is data, even ``-x``. List items
    are separate words: one starting with ``-`` (other than a negative number) or ``--`` would be
    read by argparse as an option or the end of options.
    """
    if isinstance(value, list):
        for item in value:
            text = _list_item(item)
            if why := check_word(text) or _list_hazard(text):
                return f"list item {text!r} {why}"
        return None
    if isinstance(value, str):
        return check_word(value)
    return None


_UNSUPPORTED = object()


def _plain(value: Any) -> Any:
    """bool/int/float/str/None and flat lists of them; numpy scalars decoded; else unsupported."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, NumpyArray) and value.shape == ():
        number = as_float(value) if "f" in value.dtype else as_int(value)
        return _UNSUPPORTED if number is None else number
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        if any(i is _UNSUPPORTED or isinstance(i, list) for i in items):
            return _UNSUPPORTED
        return items
    return _UNSUPPORTED


def args_to_argv(args: dict[str, Any], bool_style: str = "flag") -> tuple[list[str], list[str]]:
    """Option tokens (unquoted) for ``args`` in their saved order, and warnings about lossy values."""
    tokens: list[str] = []
    problems: list[str] = []
    for key, value in args.items():
        option = f"--{key}"
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                tokens.append(option)
            elif bool_style == "optional":
                tokens.append(f"--no-{key}")
            continue
        if why := value_problem(value):  # normally caught earlier; never emitted
            problems.append(f"--{key}: {why}: left out")
            continue
        if isinstance(value, list):
            tokens += [option, *(_list_item(v) for v in value)]
            continue
        text = _scalar(value)
        if text == "--":
            problems.append(f"--{key}: argparse cannot read back the value '--'")
        tokens.append(f"{option}={text}")
    return tokens, problems


def _scalar(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _list_item(value: Any) -> str:
    """List items are separate words, so negative floats avoid exponents argparse would take for options."""
    if isinstance(value, float) and value < 0 and "e" in repr(value):
        return format(Decimal(repr(value)), "f")
    return _scalar(value)


def _list_hazard(item: str) -> str | None:
    if item == "--":
        return "would end argparse's options: the words after it become positionals"
    if item.startswith("-") and not _NEGATIVE_NUMBER.match(item):
        return "would be read by argparse as an option"
    return None


def apply_overrides(
    saved: dict[str, Any], overrides: list[str], allow_new: bool, saved_lrs: list[Any] | None = None
) -> tuple[dict[str, Any], list[Change]]:
    """Apply ``KEY=VALUE`` overrides (typed like the saved value) and describe each one."""
    final = dict(saved)
    changes: dict[str, Change] = {}
    for text in overrides:
        key, raw = parse_override(text)
        is_new = key not in saved
        if is_new and not allow_new:
            raise BadInputError(_unknown_key_message(key, saved))
        value = coerce(raw, saved.get(key), key)
        if why := value_problem(value):
            raise BadInputError(f"--set {key}: {why}")
        final[key] = value
        change = Change(key, saved.get(key), value, is_new)
        _annotate(change, saved_lrs or [])
        changes[key] = change  # a repeated --set: the last one wins, as it does in argv
    return final, list(changes.values())


def parse_override(text: str) -> tuple[str, str]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadInputError(f"--set expects KEY=VALUE, got {text!r}")
    if not OPTION_KEY.fullmatch(key):
        raise BadInputError(f"--set: {key!r} is not an option name (letters, digits, _ . -; not starting with - or a digit)")
    return key, raw


def _unknown_key_message(key: str, saved: dict[str, Any]) -> str:
    close = get_close_matches(key, list(saved), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"--set {key}: not among the checkpoint's saved args{hint}; pass --allow-new to add it"


def coerce(raw: str, saved: Any, key: str) -> Any:
    """``raw`` as the type of the saved value; untyped (None or new) keys are guessed."""
    if isinstance(saved, bool):
        return _bool(raw, key)
    if isinstance(saved, int):
        return _typed(int, raw, key, "an integer")
    if isinstance(saved, float):
        return _typed(float, raw, key, "a number")
    if isinstance(saved, list):
        like = saved[0] if saved else None
        return [coerce(item, like, key) for item in _list_words(raw, key)]
    if isinstance(saved, str):
        return raw
    return _guess(raw)


def _bool(raw: str, key: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadInputError(f"--set {key}: saved as a boolean; {raw!r} is not true/false")


def _typed(kind: type, raw: str, key: str, what: str) -> Any:
    try:
        return kind(raw.strip())
    except ValueError:
        raise BadInputError(f"--set {key}: saved as {what}; {raw!r} is not {what}") from None


def _list_words(raw: str, key: str) -> list[str]:
    """A list value: a JSON list (``[1, 2]``) or shell-style words (``a 'b c'``)."""
    if raw.lstrip().startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"--set {key}: not a JSON list: {exc}") from None
        if not isinstance(items, list):
            raise BadInputError(f"--set {key}: not a JSON list")
        return [item if isinstance(item, str) else json.dumps(item) for item in items]
    try:
        return shlex.split(raw)
    except ValueError as exc:
        raise BadInputError(f"--set {key}: {exc}") from None


def _guess(raw: str) -> Any:
    word = raw.strip()
    if word.lower() in ("true", "false"):
        return word.lower() == "true"
    if word.lower() in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(word)
        except ValueError:
            pass
    if word.startswith("["):
        try:
            items = json.loads(word)
            if isinstance(items, list) and all(_plain(i) is not _UNSUPPORTED for i in items):
                return items
        except json.JSONDecodeError:
            pass
    return raw


def _annotate(change: Change, saved_lrs: list[Any]) -> None:
    risk = risk_of(change.key)
    if not change.changed:
        change.note = "unchanged"
        return
    if risk is not None:
        change.risk = risk.category
        lrs = ", ".join(dict.fromkeys(bounded_repr(lr, 60) for lr in saved_lrs))
        change.note = risk.reason.format(saved_lr=f" ({lrs})" if lrs else "")
    if change.is_new_key:
        change.note = "new key, not in the checkpoint's args" + (f"; {change.note}" if change.note else "")


def risk_of(key: str) -> Risk | None:
    """The first risk family whose pattern matches the whole key, if any."""
    return next((r for r in RISKS if r.pattern.fullmatch(key)), None)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b
