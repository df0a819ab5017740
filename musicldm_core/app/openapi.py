"""The page's HTTP API as an OpenAPI 3.0 document (`GET /api/openapi.json`): what serve.py answers,
written down so that clients can be generated from it and the tests can check the live server against
it (schemathesis). The request fields are the page's job fields (a batch line's, plus audio-to-audio's);
every error, whatever the route, is one JSON object: {"error": one line, "field": the field at fault}."""

from __future__ import annotations

from typing import Dict, List

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
         "properties": {"error": {"type": "string"}, "field": {"type": "string"}}}

# a job's fields: name -> (JSON schema, what it is)
FIELDS: Dict[str, tuple] = {
    "prompt": ({"type": "string", "minLength": 1, "pattern": "\\S"}, "what the music should sound like"),
    "negative": ({"type": "string", "nullable": True}, "what it should not sound like"),
    "seconds": ({"type": "number", "nullable": True, "exclusiveMinimum": True, "minimum": 0}, "length in seconds (default: the checkpoint's, 10.24)"),
    "seed": ({"type": "integer", "nullable": True, "minimum": 0, "maximum": 2**64 - 1},
             "random seed (default: drawn, and shown)"),
    "steps": ({"type": "integer", "minimum": 1}, "denoising steps (default 200)"),
    "guidance": ({"type": "number", "minimum": 0}, "classifier-free guidance scale (default 2.0)"),
    "takes": ({"type": "integer", "minimum": 1}, "takes to generate and rank with CLAP (default 1)"),
    "sampler": ({"type": "string", "nullable": True}, "a sampler's name (default: the checkpoint's)"),
    "loop": ({"type": "boolean"}, "a seamless loop"),
    "exact_batches": ({"type": "boolean"}, "run the UNet one row at a time: each take equal to its single run"),
    "strength": ({"type": "number", "nullable": True, "minimum": 0, "maximum": 1}, "with an audio part: how far to move from it, 0 to 1"),
    "inpaint": ({"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2, "nullable": True},
                "with an audio part: [start, end] seconds to regenerate"),
    "extend": ({"type": "number", "nullable": True, "exclusiveMinimum": True, "minimum": 0}, "with an audio part: seconds to continue it by"),
}

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
    fields = {name: {**schema, "description": words} for name, (schema, words) in FIELDS.items()}
    fields["sampler"] = {**fields["sampler"], "enum": samplers + [None]}
    form = {name: {"type": "string", "description": words} for name, (_, words) in FIELDS.items()}
    form["audio"] = {"type": "string", "format": "binary", "description": "the input audio of audio-to-audio"}
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
                    "application/json": {"schema": {"type": "object", "required": ["prompt"],
                                                    "additionalProperties": False, "properties": fields}},
                    "multipart/form-data": {"schema": {"type": "object", "required": ["prompt"],
                                                       "properties": form}}}},
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
