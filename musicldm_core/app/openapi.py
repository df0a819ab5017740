"""The page's HTTP API as an OpenAPI 3.0 document (`GET /api/openapi.json`): what serve.py answers,
written down so that clients can be generated from it and the tests can check the live server against
it (schemathesis). The request fields are the page's job fields (a batch line's, plus audio-to-audio's);
every error, whatever the route, is one JSON object: {"error": one line, "field": the field at fault}."""

from __future__ import annotations

from typing import Dict, List

from .jobs import PAGE_FIELDS
from .request import BY_NAME, SEED_BOUNDS

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
         "properties": {"error": {"type": "string"}, "field": {"type": "string"}}}

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}
# what the server's checks allow, stated for clients (each field's type and help come from request.py)
CONSTRAINTS = {"prompt": {"minLength": 1, "pattern": "\\S"}, "seconds": {"exclusiveMinimum": True, "minimum": 0},
               "seed": {"minimum": SEED_BOUNDS[0], "maximum": SEED_BOUNDS[1]}, "steps": {"minimum": 1},
               "guidance": {"minimum": 0}, "takes": {"minimum": 1}, "strength": {"minimum": 0, "maximum": 1},
               "inpaint": {"items": {"type": "number"}, "minItems": 2, "maxItems": 2},
               "extend": {"exclusiveMinimum": True, "minimum": 0}, "like_weight": {"minimum": 0},
               "blend": {"items": {"type": "string", "pattern": "\\S"}},
               "schedule": {"items": {"type": "array", "minItems": 2, "maxItems": 2,
                                      "items": {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}}},
               "travel": {"minimum": 0}}
FILE_PARTS = {"audio": "the input audio of audio-to-audio",
              "like": "an audio prompt: music like this clip (sent as a file; a job names no path)"}


def field_schema(name: str, kind: type) -> dict:
    """A job field's JSON schema: its type, null where it has no default, its bounds, its help."""
    nullable = BY_NAME[name].default is None and name != "prompt"
    words = BY_NAME[name].metadata["help"].replace("with --input", "with an audio part").replace("START:END", "")
    return {"type": JSON_TYPES[kind], **({"nullable": True} if nullable else {}), **CONSTRAINTS.get(name, {}),
            "description": words}


JOB = {"type": "object", "required": ["id", "state", "progress", "files"],
       "properties": {"id": {"type": "string"},
                      "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
                      "progress": {"type": "number", "minimum": 0, "maximum": 1},
                      "error": {"type": "string", "nullable": True}, "seed": {"type": "integer"},
                      "files": {"type": "array", "items": {"type": "string"}},
                      "pictures": {"type": "array", "items": {"type": "string"}},
                      "scores": {"type": "array", "items": {"type": "number"}, "nullable": True},
                      "command": {"type": "string", "nullable": True}, "created": {"type": "number"},
                      "settings": {"type": "object"}}}


def _errors(*statuses: int) -> dict:
    words = {400: "a bad field or body", 401: "the server's token is missing", 403: "another site or Host",
             404: "no such job or file", 405: "method not allowed", 411: "no Content-Length",
             413: "a body or input over its limit", 415: "neither JSON nor a form", 500: "a bug (the server goes on)",
             503: "the queue is full, or the server is stopping"}
    return {str(s): {"description": words[s], "content": {"application/json": {"schema": ERROR}}}
            for s in statuses}


def _ok(description: str, kind: str, schema: dict) -> dict:
    return {"description": description, "content": {kind: {"schema": schema}}}


def document(samplers: List[str], limits: Dict[str, float]) -> dict:
    """The OpenAPI document of this server (its samplers and limits filled in)."""
    fields = {name: field_schema(name, kind) for name, kind in PAGE_FIELDS.items() if name not in FILE_PARTS}
    fields["sampler"] = {**fields["sampler"], "enum": samplers + [None]}
    form = {name: {"type": "string", "description": schema["description"]} for name, schema in fields.items()}
    form.update({name: {"type": "string", "format": "binary", "description": words}
                 for name, words in FILE_PARTS.items()})
    always = (400, 401, 403, 405, 500)
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "musicldm serve", "version": "1",
                 "description": "Make music with MusicLDM from a local page; every error is {error, field}."},
        "paths": {
            "/": {"get": {"summary": "the page", "responses": {
                "200": _ok("the page", "text/html", {"type": "string"}), **_errors(*always)}}},
            "/api/openapi.json": {"get": {"summary": "this document", "responses": {
                "200": _ok("the document", "application/json", {"type": "object"}), **_errors(*always)}}},
            "/api/jobs": {
                "get": {"summary": "every job, newest first", "responses": {
                    "200": _ok("the jobs", "application/json", {
                        "type": "object", "required": ["jobs", "samplers", "limits"],
                        "properties": {"jobs": {"type": "array", "items": JOB},
                                       "samplers": {"type": "array", "items": {"type": "string"}},
                                       "limits": {"type": "object"}}}),
                    **_errors(*always)}},
                "post": {"summary": "queue a job", "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"type": "object", "additionalProperties": False,
                                                    "properties": fields}},
                    "multipart/form-data": {"schema": {"type": "object", "properties": form}}}},
                    "responses": {"202": _ok("queued", "application/json", {
                        "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}),
                        **_errors(*always, 411, 413, 415, 503)}}},
            "/api/jobs/{job_id}": {
                "get": {"summary": "one job", "parameters": job_id, "responses": {
                    "200": _ok("the job", "application/json", JOB), **_errors(*always, 404)}},
                "delete": {"summary": "cancel a job (a running one stops at its next step)", "parameters": job_id,
                           "responses": {"200": _ok("the job", "application/json", JOB),
                                         **_errors(*always, 404)}}},
            "/files/{name}": {"get": {
                "summary": "a file this server (or a batch run into its folder) recorded; nothing else",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the file", "content": {
                    "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}}}}, **_errors(*always, 404)}}},
        },
        "x-limits": limits,
    }
