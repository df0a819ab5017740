"""Fuzzing the parsers that read untrusted bytes (Hypothesis): random and mutated inputs must end in a
result or in the parser's one named refusal, never in another exception, a hang, a dropped connection,
or code run from a file.

* the converter's readers (torch's weights-only unpickler, our restricted one, the archive checks):
  mutated torch.save archives with calls to os.system & co. spliced in, and random bytes; a marker file
  that every spliced call would create never appears;
* the page's HTTP layer: random methods, paths, queries, headers and JSON / multipart / raw bodies, over
  a real socket: every answer has a status line, every error a JSON body, and the server keeps serving;
* prompt files, manifests and the remake tag: random bytes and mutations of valid ones.

The default run tries a bounded number of cases (about a minute in all). For a long run:

    MUSICLDM_FUZZ_EXAMPLES=100000 python -m pytest tests/test_fuzz.py -q -s

(each test then tries that many cases; the counts and any failure are printed).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import time
import zipfile
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import exchange, idle_server
from musicldm_core.app import batch, cli, jobs, manifest, prompt_file, web
from weights_convert import original, reader

EXAMPLES = int(os.environ.get("MUSICLDM_FUZZ_EXAMPLES", "0"))
COUNTS: dict = {}


def budget(default: int):
    """Hypothesis settings: `default` cases (MUSICLDM_FUZZ_EXAMPLES overrides), no deadline per case but a
    hard limit checked by the tests, no shrinking-phase surprises from slow cases."""
    return settings(max_examples=EXAMPLES or default, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=list(HealthCheck), database=None)


def counted(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def say_counts():
    yield
    if EXAMPLES:
        print("\nfuzz cases tried: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))


def mutate(data: bytes, edits) -> bytes:
    """Apply (position, kind, bytes) edits: overwrite, insert or delete at a position."""
    out = bytearray(data)
    for at, kind, chunk in edits:
        at = at % (len(out) + 1)
        if kind == 0:
            out[at:at + len(chunk)] = chunk
        elif kind == 1:
            out[at:at] = chunk
        else:
            del out[at:at + len(chunk)]
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 2), st.binary(min_size=1, max_size=16)),
                 min_size=1, max_size=6)

# --- the converter ------------------------------------------------------------------------------------------

MARKER = Path(tempfile.gettempdir()) / f"musicldm-fuzz-marker-{os.getpid()}"


def _calls(marker: Path) -> list:
    """Pickle snippets that would create `marker` if any reader ran them (protocol 0 and 4 spellings)."""
    path = str(marker).encode()
    return [b"cos\nsystem\n(Vtouch " + path + b"\ntR.",
            b"cposix\nsystem\n(Vtouch " + path + b"\ntR.",
            b"\x8c\x02os\x94\x8c\x06system\x94\x93\x8c\x06touch " + path + b"\x85R.",
            b"cbuiltins\nexec\n(Vopen('" + path + b"','w')\ntR.",
            b"cbuiltins\ngetattr\n(cbuiltins\nopen\nV__call__\ntR(V" + path + b"\nVw\ntR.",
            b"csubprocess\ncall\n((Vtouch\nV" + path + b"\nltR.",
            b"ctorch\nsave\n(}V" + path + b"\ntR."]


def _archive(pickled: bytes, extra: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickled)
        for name, data in extra.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _base_checkpoint() -> tuple:
    """A torch.save archive of a small state dict (its data.pkl and other entries)."""
    buffer = io.BytesIO()
    torch.save({"state_dict": {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}, "epoch": 3}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as z:
        entries = {info.filename: z.read(info.filename) for info in z.infolist()}
    pkl = next(k for k in entries if k.endswith("data.pkl"))
    prefix = pkl[: -len("data.pkl")]
    return entries.pop(pkl), {k.replace(prefix, "archive/", 1): v for k, v in entries.items()}


BASE_PKL, BASE_ENTRIES = _base_checkpoint()


def _read(path: Path) -> None:
    """What the converter does with a file: a tensor dict, or one ConversionError."""
    try:
        obj, _ = reader.read_checkpoint(path)
        state = reader.state_dict_of(obj, path)
        assert all(torch.is_tensor(v) for v in state.values())
    except original.ConversionError as e:  # one line, naming the file
        assert str(e).startswith(str(path)) and "\n" not in str(e), str(e)


@budget(1500)
@given(edits=EDITS, call=st.sampled_from(range(7)), where=st.integers(0, 2**12), raw=st.booleans())
def test_the_converter_never_runs_a_pickle(edits, call, where, raw, tmp_path_factory):
    counted("converter")
    folder = tmp_path_factory.mktemp("fuzz")
    snippet = _calls(MARKER)[call]
    at = where % (len(BASE_PKL) + 1)
    pickled = mutate(BASE_PKL[:at] + snippet + BASE_PKL[at:], edits)
    path = folder / "x.ckpt"
    path.write_bytes(mutate(_archive(pickled, BASE_ENTRIES), edits) if raw else _archive(pickled, BASE_ENTRIES))
    began = time.process_time()  # CPU time: a fuzz run beside other work (nice) may wait for minutes
    _read(path)
    assert time.process_time() - began < 30, "a read took over 30 s of CPU"
    assert not MARKER.exists(), "a pickle ran code"


@budget(1000)
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".ckpt", ".pt", ".safetensors", ".bin"]))
def test_random_bytes_are_one_refusal(data, suffix, tmp_path_factory):
    counted("converter-bytes")
    path = tmp_path_factory.mktemp("fuzz") / f"x{suffix}"
    path.write_bytes(data)
    _read(path)


def test_every_spliced_call_is_refused_whole(tmp_path):
    """The snippets themselves, as a whole data.pkl: each is refused by name (so the fuzzer's marker
    would have been made had any reader run it)."""
    for snippet in _calls(MARKER):
        path = tmp_path / "x.ckpt"
        path.write_bytes(_archive(snippet, BASE_ENTRIES))
        with pytest.raises(original.ConversionError, match="refused|not a PyTorch checkpoint|damaged"):
            reader.read_checkpoint(path)
    assert not MARKER.exists()


# --- prompt files, manifests, the remake tag -------------------------------------------------------------

VALID_PROMPTS = (b'{"prompt": "techno", "id": "a", "seed": 3, "steps": 3}\n# a comment\n'
                 b'{"prompt": "jazz", "takes": 2, "loop": true, "window": "windowed"}\n{"prompt": "x", "seconds": 1.5}\n'
                 b'{"blend": ["a:0.5", "b:1"], "blend_mode": "slerp"}\n'
                 b'{"schedule": [[0, "a"], [2, "b:1 | like:r.wav:0.5"]], "travel": 1, "seconds": 4}\n')
DEFAULTS = {"steps": 3, "guidance": 2.0, "takes": 1, "negative": None, "seconds": None, "sampler": None,
            "loop": False, "window": "auto", "exact_batches": False}


@budget(2400)
@given(data=st.one_of(st.binary(max_size=512), EDITS.map(lambda e: mutate(VALID_PROMPTS, e))),
       suffix=st.sampled_from([".jsonl", ".txt", ".list"]))
def test_prompt_files_give_items_or_named_lines(data, suffix, tmp_path_factory):
    counted("prompt files")
    path = tmp_path_factory.mktemp("fuzz") / f"p{suffix}"
    path.write_bytes(data)
    try:
        items, problems = prompt_file.read_items(path, DEFAULTS, 0)
    except ValueError as e:  # the whole file: not UTF-8
        assert "--prompts" in str(e)
        return
    assert all(isinstance(p, str) and p.startswith(str(path)) for p in problems)
    assert all(isinstance(item, prompt_file.Item) for item in items)


VALID_MANIFEST = (json.dumps({"id": "a", "prompt": "rain", "negative": None, "seconds": 1.0, "seed": 1, "steps": 3,
                              "guidance": 2.0, "takes": 1, "sampler": "ddim", "files": ["a.wav"],
                              "asked": {"prompt": "rain"}}) + "\n" + json.dumps({"id": "b", "files": []}) + "\n"
                  ).encode()


@budget(1500)
@given(data=st.one_of(st.binary(max_size=512), EDITS.map(lambda e: mutate(VALID_MANIFEST, e))))
def test_manifests_are_read_or_set_aside(data, tmp_path_factory):
    counted("manifests")
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "manifest.jsonl").write_bytes(data)
    (folder / "a.wav").write_bytes(b"RIFF")
    records = manifest.read_records(folder)
    assert all(isinstance(r["id"], str) and isinstance(r["files"], list) for r in records.values())
    item = prompt_file.Item(1, "a", "rain", None, 1.0, 1, 3, 2.0, 1, "ddim")
    manifest.is_done(item, records, folder, {})
    jobs.Service(None, folder, "w", device="cpu")  # the page's history: lists what it can, never raises


NUMBERS = st.integers(-2, 5) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=3) | st.none()
ENTRIES = st.text(max_size=12) | st.sampled_from(["a:0.5 | b", "like:", "like:x.wav:2", "a | like:r:1 | like:s"]) | \
    st.dictionaries(st.sampled_from(["prompt", "prompt_weights", "audio_prompt", "audio_prompt_weight", "x"]),
                    st.text(max_size=6) | st.lists(NUMBERS, max_size=3) | NUMBERS, max_size=3)
CONDITIONS = st.fixed_dictionaries({}, optional={
    "prompt": st.text(max_size=8) | st.lists(st.text(max_size=6), max_size=3) | st.integers(),
    "prompt_weights": st.lists(NUMBERS, max_size=3) | NUMBERS,
    "audio_prompt": st.sampled_from(["missing.wav", "/"]) | st.lists(st.floats(-2, 2), min_size=0, max_size=900).map(
        lambda v: __import__("numpy").asarray(v, dtype="float32")),
    "audio_sampling_rate": st.sampled_from([16000, 44100, 8000, 0, 44101]) | st.none(),
    "audio_prompt_weight": NUMBERS, "blend": st.sampled_from(["linear", "slerp", "cubic"]) | NUMBERS,
    "schedule": st.lists(st.tuples(NUMBERS, ENTRIES) | NUMBERS, max_size=4) | NUMBERS,
    "travel": NUMBERS, "window": st.sampled_from([None, "whole", "windowed"]), "loop": st.booleans()})


@pytest.fixture(scope="module")
def tiny_configs(tiny_ckpt):
    from musicldm_core.load import open_checkpoint

    return open_checkpoint(str(tiny_ckpt), None)


@budget(300)
@given(kw=CONDITIONS)
def test_conditions_are_planned_or_refused_by_name(kw, tiny_configs):
    """Any blend, audio prompt or schedule (numbers, texts, arrays, mappings in every place) is planned against
    the checkpoint's configs, or refused with a RequestError: never another exception."""
    from musicldm_core.errors import RequestError
    from musicldm_core.options import Options, plan_call

    counted("conditions")
    try:
        run = plan_call(Options(audio_length_in_s=3.0, num_inference_steps=2, **kw), tiny_configs.configs,
                        tiny_configs.scheduler, torch.device("cpu"))
    except RequestError as e:
        assert str(e) and "\x1f" not in str(e)
        return
    assert run.frames > 0


@budget(1000)
@given(text=st.text(max_size=40))
def test_entries_parse_or_are_named(text):
    """The words of --at and --blend: a text, a mapping of parts, or one ValueError naming the flag."""
    from musicldm_core.app.request import parse_entry, parse_part, with_like_paths

    counted("entries")
    for parse in (parse_entry, parse_part):
        try:
            out = parse(text, "--at 1")
            assert isinstance(out, (str, dict, tuple))
        except ValueError as e:
            assert str(e).startswith("--at 1: ")
    assert isinstance(with_like_paths(text, lambda p: "/abs/" + p), str)  # never raises: parse_entry names faults


VALID_TAG = "musicldm 'rain on a roof' -o rain.wav --seed 7 --steps 3 --guidance 2.0 --sampler ddim --takes 2 --take 1"


@budget(2400)
@given(tag=st.one_of(st.text(max_size=200).map(lambda t: "musicldm " + t), st.text(max_size=100),
                     EDITS.map(lambda e: mutate(VALID_TAG.encode(), e).decode("utf-8", "replace"))))
def test_a_tag_parses_or_is_named(tag, capsys):
    counted("tags")
    try:
        args = cli.parse_tag(tag, "x.wav")
        assert isinstance(args, Namespace)
    except cli.TagError as e:
        assert str(e).startswith("--from: the tag of 'x.wav' does not parse (")
    except ValueError as e:
        assert "records no musicldm command" in str(e)
    capsys.readouterr()


def test_the_valid_tag_parses_exactly():
    args = cli.parse_tag(VALID_TAG, "x.wav")
    assert (args.prompt, args.seed, args.steps, args.takes, args.take) == ("rain on a roof", 7, 3, 2, 1)


# --- the page's HTTP layer -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ckpt):
    """A server whose worker never starts: jobs queue (up to 4), nothing generates."""
    from musicldm_core import MusicLDMPipeline

    with idle_server(MusicLDMPipeline.from_pretrained(tiny_ckpt), tmp_path_factory.mktemp("fuzz-out"), tiny_ckpt,
                     max_queue=4) as running:
        yield running


TOKEN = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1, max_size=12)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)
FIELD_NAMES = st.sampled_from(["prompt", "negative", "seconds", "seed", "steps", "guidance", "takes", "sampler",
                               "loop", "exact_batches", "strength", "inpaint", "extend", "window", "id", "x",
                               "like", "like_weight", "blend", "blend_mode", "schedule", "travel"])


def _multipart_body(fields: dict, audio, part: str = "audio") -> tuple:
    """A form with text fields and, if given, one file part (`audio` or `like`)."""
    boundary = "fuzzb0undary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v + b"\r\n"
             for k, v in fields.items()]
    if audio is not None:
        name, data = audio
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{part}"; filename="{name}"\r\n\r\n'
                     .encode("utf-8", "replace") + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@st.composite
def requests(draw, host: str):
    method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS"]) | TOKEN)
    path = draw(st.sampled_from(["/", "/api/jobs", "/api/jobs/x", "/files/a.wav", "/files/..", "/api/openapi.json",
                                 "/index.html"]) | st.text(max_size=40).map(lambda t: "/" + t))
    query = draw(st.sampled_from(["", "?token=x", "?a=b&c"]) | st.text(max_size=20).map(lambda t: "?" + t))
    kind = draw(st.sampled_from(["json", "multipart", "raw", "none"]))
    if kind == "json":
        value = draw(st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=6) | JSON_VALUES)
        body, ctype = json.dumps(value).encode(), "application/json"
    elif kind == "multipart":
        fields = draw(st.dictionaries(FIELD_NAMES, st.binary(max_size=20), max_size=5))
        audio = draw(st.none() | st.tuples(st.text(max_size=30), st.binary(max_size=64)))
        body, ctype = _multipart_body(fields, audio, draw(st.sampled_from(["audio", "like"])))
    else:
        body, ctype = (draw(st.binary(max_size=200)), draw(st.text(max_size=30))) if kind == "raw" else (b"", None)
    headers = {"Host": draw(st.sampled_from([host, host, "localhost.evil.example:1", "localhost:1"]))}
    if ctype is not None:
        headers["Content-Type"] = ctype
    length = draw(st.sampled_from(["exact", "exact", "missing", "huge", "junk"]))
    headers["Content-Length"] = {"exact": str(len(body)), "missing": None, "huge": "1000000000",
                                 "junk": draw(st.sampled_from(["\xb2", "-1", "1e3", " 5", "0x10", "abc"]))}[length]
    for name, value in draw(st.lists(st.tuples(TOKEN, st.text(max_size=30)), max_size=3)):
        headers[name] = value
    if draw(st.booleans()):
        headers["Origin"] = draw(st.sampled_from([f"http://{host}", "http://evil.example", "null"]))
        headers["Sec-Fetch-Site"] = draw(st.sampled_from(["same-origin", "same-site", "cross-site", "none"]))
    head = f"{method} {path}{query} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()
                                                            if v is not None)
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body


def _check(answer: bytes, method: str) -> None:
    assert answer.startswith(b"HTTP/1."), f"no status line: {answer[:80]!r}"
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status != 500, body
    if status >= 400 and method != "HEAD":
        assert b"application/json" in head, head
        assert isinstance(json.loads(body)["error"], str)


def test_the_http_layer_answers_every_request(server):
    host = f"localhost:{server.port}"
    tried = []

    @budget(1500)
    @given(request=requests(host))
    def one(request):
        counted("http")
        tried.append(1)
        _check(exchange(server.port, request), request.split(b" ", 1)[0].decode("latin-1"))

    one()
    answer = exchange(server.port, f"GET /api/jobs HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert len(tried) >= min(1500, EXAMPLES or 1500) * 0.5


@budget(2400)
@given(body=st.one_of(st.binary(max_size=300), st.builds(lambda f, a, p: _multipart_body(f, a, p)[0],
                                                          st.dictionaries(FIELD_NAMES, st.binary(max_size=20)),
                                                          st.none() | st.tuples(st.text(max_size=20),
                                                                                st.binary(max_size=20)),
                                                          st.sampled_from(["audio", "like"]))))
def test_forms_parse_or_are_refused(body):
    counted("forms")
    try:
        data, files = web._multipart("multipart/form-data; boundary=fuzzb0undary", body)
        assert isinstance(data, dict) and set(files) <= set(web.FILE_PARTS)
        for payload, name in files.values():
            assert isinstance(payload, bytes) and payload
            assert jobs.upload_name(name) in ("input",) or jobs.upload_name(name).startswith("input.")
    except jobs.Refused as e:
        assert e.status == 400 and str(e)


def test_pickle_module_is_not_the_readers():
    """The restricted reader refuses by itself, without pickle's own global lookups (a guard on the guard)."""
    assert reader._Restricted.find_class is not pickle.Unpickler.find_class


@budget(500)
@given(lines=st.lists(st.fixed_dictionaries({}, optional={
    "prompt": JSON_VALUES, "like": JSON_VALUES, "like_weight": JSON_VALUES, "blend": JSON_VALUES | st.lists(
        st.text(max_size=8) | JSON_VALUES, max_size=3), "blend_mode": JSON_VALUES, "travel": JSON_VALUES,
    "schedule": JSON_VALUES | st.lists(st.lists(JSON_VALUES, max_size=3) | st.tuples(
        st.integers(-1, 5) | st.floats(), st.text(max_size=12)).map(list), max_size=3)}), min_size=1, max_size=3))
def test_condition_lines_give_items_or_named_lines(lines, tmp_path_factory):
    """Batch lines with any values in the condition's fields (JSON of every shape): items, or one problem a line."""
    counted("condition lines")
    path = tmp_path_factory.mktemp("fuzz") / "p.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items, problems = prompt_file.read_items(path, DEFAULTS, 0)
    assert len(items) + len(problems) == len(lines)
    assert all(p.startswith(f"{path} line ") for p in problems)
