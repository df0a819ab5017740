"""A prompt file read and checked, line by line, before any model loads: JSON Lines (`{"prompt": ...,
"id": ..., "seed": ..., ...}`, see FIELDS) or plain text, one prompt a line (decided by the extension, else by
the first line that is not a # comment). Each line becomes an Item with every value decided: missing ids and
seeds are derived from the line and --seed, so a rerun makes the same audio; each problem is named by line
(its values, and its file names against every other item's)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .files import audio_hashes
from .prepare import options_of
from .request import (BY_NAME, CONDITION_FIELDS, Request, as_tuples, audio_files, check_bounds, fields_of, names,
                      renamed, with_like_paths)

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


# JSON field -> its type (all but prompt and id override the command's option of the same name): request.py's
FIELDS = {"prompt": str, "id": str, **fields_of("line")}
NAMES = names("line")  # the pipeline's argument names -> the fields, for messages


@dataclass(frozen=True)
class Item:
    """One line of the prompt file, with every value decided."""

    line: int
    id: str
    prompt: Optional[str]  # None: the condition is the item's like, blend or schedule alone
    negative: Optional[str]
    seconds: Optional[float]  # None: the checkpoint's default length
    seed: int
    steps: int
    guidance: float
    takes: int
    sampler: Optional[str]  # None: the checkpoint's own
    loop: bool = False  # a seamless loop
    window: str = "auto"  # the command line's: windows past the trained length
    exact_batches: bool = False  # the UNet one row at a time: equal to its single run to the bit
    # the condition beyond the prompt (request.py): an item that sets any of these runs alone
    like: Optional[str] = None  # an audio prompt, by absolute path (a line's is relative to its prompt file)
    like_weight: float = 1.0
    blend: Tuple[str, ...] = ()  # "TEXT:W" parts
    blend_mode: str = "linear"
    schedule: Tuple[Tuple[float, str], ...] = ()  # (seconds, entry), entries' like: files by absolute path
    travel: Optional[float] = None

    @property
    def conditioned(self) -> bool:
        return any(getattr(self, k) != BY_NAME[k].default for k in CONDITION_FIELDS)

    def files(self, out_dir: Path) -> List[Path]:
        """DIR/<id>.wav, or DIR/<id>-1.wav ... DIR/<id>-N.wav (best first) for several takes."""
        if self.takes == 1:
            return [out_dir / f"{self.id}.wav"]
        return [out_dir / f"{self.id}-{k}.wav" for k in range(1, self.takes + 1)]

    @property
    def group(self) -> tuple:
        """Items with the same group run through the models together."""
        return self.seconds, self.steps, self.sampler, self.guidance, self.takes, self.loop, self.window, \
            self.exact_batches, self.id if self.conditioned else None

    def request(self, **run) -> Request:
        """This item as the typed request (`run`: the run's own settings, eta, an input, ...; they win)."""
        values = {k: v for k, v in asdict(self).items() if k not in ("line", "id")}
        return Request(**{**values, **run})

    def recorded(self) -> dict:
        """Its fields as its records keep them: the condition's only when set (records made before them match)."""
        return {k: v for k, v in asdict(self).items() if k not in CONDITION_FIELDS or v != BY_NAME[k].default}

    def asked(self, extra: Dict[str, object]) -> dict:
        """What this item's files were made from, as its manifest record keeps it ("asked"): its values
        and the run's (`extra`: weights, revision, sample rate). A rerun skips the item only when this is
        unchanged; otherwise it is made again. exact_batches is kept only when on, so that the records of
        earlier runs (made exact, without the field) still match; so are the condition's fields, and the
        SHA-256 of each audio prompt when there is one."""
        values = {k: v for k, v in self.recorded().items() if k not in ("line", "id")
                  and not (k == "exact_batches" and not v)}
        files = audio_files(self.request())  # their bytes: a changed audio prompt makes the item again
        return json.loads(json.dumps({**values, **extra, **({"audio_sha256": audio_hashes(files)} if files else {})}))


def derived_seed(base: int, item_id: str) -> int:
    """A seed for an item that gives none: from --seed and the item's id, the same on every run."""
    return int.from_bytes(hashlib.sha256(f"{base}\n{item_id}".encode()).digest()[:8], "little") >> 1


def slug(text: str, limit: int = 40, empty: str = "item") -> str:
    """A short file-name-safe name from a prompt, for an id: its words in lower case, joined by '-'."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:limit].rstrip("-") or empty


def read_text(path: Path, flag: str) -> str:
    """A text file as UTF-8 (a byte-order mark dropped); bytes that are not UTF-8 named by line and column."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{flag}: cannot read {str(path)!r} ({e.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{flag}: {str(path)!r} line {line} is not UTF-8 (byte 0x{data[e.start]:02x} at column "
                         f"{column}); save the file as UTF-8") from None


def is_json_lines(path: Path, lines: List[str]) -> bool:
    """The prompt file's format: by the extension (.jsonl, .json: JSON Lines; .txt: one prompt a line),
    else by the first line that is neither blank nor a `# comment`."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".txt"):
        return suffix != ".txt"
    first = next((line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    return first.startswith("{")


def read_items(path: Path, defaults: Dict[str, object], base_seed: int) -> Tuple[List[Item], List[str]]:
    """(the good items, one problem per bad line); reads and checks, loads no model.

    defaults: the command's values for the FIELDS other than prompt and id. Blank lines and lines
    starting with # are skipped in both formats. Two items whose files would share a name (also when
    only letter case differs, as on macOS and Windows) are refused by line.
    """
    lines = read_text(path, "--prompts").splitlines()
    as_json = is_json_lines(path, lines)
    items: List[Item] = []
    problems: List[str] = []
    owners: Dict[str, Item] = {}  # file name, case folded -> the item that writes it
    ids: Dict[str, Item] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = _parse(line, as_json)
            values = {**defaults, **{k: v for k, v in data.items() if k != "id"}, **_beside(data, Path(path).parent)}
            item_id = data.get("id", f"{number:05d}-{slug(title(values))}")
            if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id):
                raise ValueError(f"id {item_id!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a "
                                 "letter or digit (it names the output files)")
            seed = values["seed"] if values.get("seed") is not None else derived_seed(base_seed, item_id)
            check_bounds("seed", seed, "seed")  # an integer: check_fields refused any other JSON value
            item = Item(number, item_id, values.get("prompt"), values.get("negative"), values.get("seconds"), seed,
                        values["steps"], values["guidance"], values["takes"], values.get("sampler"),
                        values.get("loop", False), values.get("window", "auto"), values.get("exact_batches", False),
                        **{k: as_tuples(values[k]) for k in CONDITION_FIELDS if values.get(k) is not None})
            options_of([item.request()]).check()
            if item_id in ids:  # the manifest keeps one record per id, whatever files the items write
                raise ValueError(f"id {item_id!r} is also on line {ids[item_id].line}")
            for name in (p.name.casefold() for p in item.files(Path())):
                other = owners.get(name)
                if other is not None:
                    case = other.id.casefold() == item_id.casefold()
                    why = " (letter case does not tell files apart on macOS and Windows)" if case else ""
                    raise ValueError(f"id {item_id!r} and {other.id!r} on line {other.line} both write {name!r}{why}")
        except ValueError as e:
            problems.append(f"{path} line {number}: {renamed(e, NAMES)}")
            continue
        owners.update((p.name.casefold(), item) for p in item.files(Path()))
        ids[item_id] = item
        items.append(item)
    if not items and not problems:
        problems.append(f"{path}: no prompts in the file")
    return items, problems


def _beside(data: dict, folder: Path) -> dict:
    """A line's audio prompts (like, and its schedule's like: parts) by absolute path, relative to its prompt file."""
    where = lambda path: str((folder / path).resolve())  # noqa: E731 (an absolute path stays as it is)
    out: Dict[str, object] = {}
    if isinstance(data.get("like"), str):
        out["like"] = where(data["like"])
    if isinstance(data.get("schedule"), list):
        out["schedule"] = [[p[0], with_like_paths(p[1], where)] if isinstance(p, list) and len(p) == 2
                           and isinstance(p[1], str) else p for p in data["schedule"]]
    return out


def title(values: dict) -> str:
    """What an item's id is made from: its prompt, else its first blend part or schedule entry."""
    if values.get("prompt"):
        return values["prompt"]
    parts = list(values.get("blend") or ()) + [e[1] for e in values.get("schedule") or ()
                                               if isinstance(e, (list, tuple)) and len(e) == 2]
    return str(parts[0]) if parts else ""


def _parse(line: str, as_json: bool) -> dict:
    if not as_json:
        return {"prompt": line.strip()}
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a line must be a JSON object, got {type(data).__name__}")
    check_fields(data)
    return data


def check_fields(data: dict, fields: Dict[str, type] = FIELDS, optional: Tuple[str, ...] = (),
                 conditioned: bool = False) -> None:
    """A batch line's (or a web request's) fields: known names, the prompt given (or a like, blend or schedule;
    conditioned: a like given beside them, the page's upload), each value of its type. `optional`: fields
    beyond FIELDS' that may be null."""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(fields)}")
    if "prompt" not in data and not conditioned and not any(data.get(k) for k in ("like", "blend", "schedule")):
        raise ValueError("the field 'prompt' is missing (or give like, blend or schedule)")
    words = {float: "a number", int: "an integer", str: "text", bool: "true or false", list: "a list"}
    for key, value in data.items():
        kind = fields[key]
        ok = isinstance(value, bool) if kind is bool else (
            not isinstance(value, bool) and (isinstance(value, kind) or kind is float and isinstance(value, int)))
        if not ok and not (value is None and key in ("negative", "seconds", "seed", "sampler", "like", "travel")
                           + optional):
            raise ValueError(f"{key} must be {words.get(kind, kind.__name__)}, got {value!r}")
        shape = LIST_ITEMS.get(key)
        for i, v in enumerate(value if shape is not None and isinstance(value, list) else ()):
            if not shape[0](v):
                raise ValueError(f"{key}[{i}] must be {shape[1]}, got {v!r}")


# what each element of a condition's list field must be (the core checks the values: conditioning.py)
LIST_ITEMS = {"blend": (lambda v: isinstance(v, str), 'a text, "TEXT:W"'),
              "schedule": (lambda v: isinstance(v, list) and len(v) == 2 and isinstance(v[1], str)
                           and isinstance(v[0], (int, float)) and not isinstance(v[0], bool),
                           "a pair [seconds, entry]")}
