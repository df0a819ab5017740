"""The page's API against its own OpenAPI document (GET /api/openapi.json): schemathesis generates requests
from the document for every route and checks each answer of the live server (status codes and content
types the document lists, bodies that match its schemas, no 5xx); the document lists every route the
server answers, and the API table in docs/page.md names the same routes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from helpers import idle_server
from musicldm_core import MusicLDMPipeline
from musicldm_core.app import openapi, prompt_file, web
from musicldm_core.audio_input import MAX_INPUT_SECONDS
from musicldm_core.samplers import SAMPLERS

LIMITS = {"json": web.JSON_LIMIT, "upload": web.UPLOAD_LIMIT, "input_seconds": MAX_INPUT_SECONDS}
DOCUMENT = openapi.document(list(SAMPLERS), LIMITS)
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ckpt):
    """A live server whose worker never starts: a valid job is queued (202), and the queue never fills (a full
    queue answers 503, which schemathesis would take for a server error)."""
    out = tmp_path_factory.mktemp("openapi-out")
    (out / "a.wav").write_bytes(b"RIFF")
    with idle_server(MusicLDMPipeline.from_pretrained(tiny_ckpt), out, tiny_ckpt, max_queue=10**6) as running:
        yield running


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_the_live_server_matches_its_document(case, server):
    """Every check but positive_data_acceptance: the document cannot say the rules that join fields or need
    the checkpoint (strength needs an audio part, a length must fit in memory, a sampler's step counts), so
    some schema-valid jobs are rightly refused (400, by field)."""
    case.call_and_validate(base_url=f"http://127.0.0.1:{server.port}",
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])


def test_the_server_serves_its_document(server):
    import http.client
    import json

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/api/openapi.json", headers={"Host": f"localhost:{server.port}"})
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read()) == json.loads(json.dumps(DOCUMENT))


def test_the_document_names_every_field_and_route():
    """Its job fields are the page's (a batch line's less id and window, plus audio-to-audio's; the audio
    prompt `like` only as a form's file part), and the API table in docs/page.md lists exactly its routes."""
    from musicldm_core.app import batch, prompt_file

    page_fields = {k for k in prompt_file.FIELDS if k not in ("id", "window")} | {"strength", "inpaint", "extend"}
    content = DOCUMENT["paths"]["/api/jobs"]["post"]["requestBody"]["content"]
    assert set(content["application/json"]["schema"]["properties"]) == page_fields - {"like"}  # a clip: a file part
    form = content["multipart/form-data"]["schema"]["properties"]
    assert set(form) == page_fields | {"audio"} and form["like"]["format"] == form["audio"]["format"] == "binary"
    routes = {(method.upper(), path.replace("{job_id}", "ID").replace("{name}", "NAME"))
              for path, methods in DOCUMENT["paths"].items() for method in methods}
    readme = (Path(__file__).parent.parent / "docs" / "page.md").read_text()
    table = set(re.findall(r"^\| `(GET|POST|DELETE) (/\S*)` \|", readme, re.M))
    assert table == routes - {("GET", "/")}, (table, routes)
